//! Gateway configuration: every setting is a `meshgate serve` flag with a `MESHGATE_*`
//! environment variable (see `docs/configuration.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the gateway serves.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "MESHGATE_LISTEN", default_value = "127.0.0.1:8815")]
    pub listen: SocketAddr,

    /// Mesh folder: `<domain>/<product>/product.odps.yaml` and one `<port>.odcs.yaml` per port.
    /// Without it, the bundled sample mesh is served from `./mesh` (written there, with its
    /// generated data, when missing).
    #[arg(long, env = "MESHGATE_MESH")]
    pub mesh: Option<PathBuf>,

    /// Key that signs tickets, hex or base64, at least 32 bytes. Replicas behind one address
    /// need the same key. Unset: a random key per process (tickets do not survive a restart).
    #[arg(long, env = "MESHGATE_TICKET_KEY", hide_env_values = true)]
    pub ticket_key: Option<String>,

    /// How long a ticket from GetFlightInfo stays valid.
    #[arg(long, env = "MESHGATE_TICKET_TTL", default_value = "1h", value_parser = parse_duration)]
    pub ticket_ttl: Duration,

    /// PEM certificate chain for TLS.
    #[arg(long, env = "MESHGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS.
    #[arg(long, env = "MESHGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA whose client certificates are accepted as identities (mTLS). Certificates from any
    /// other CA are refused during the TLS handshake; clients without a certificate may still
    /// authenticate with a bearer token.
    #[arg(long, env = "MESHGATE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Allow plain TCP on a non-loopback address. Without TLS the gateway otherwise refuses to
    /// listen anywhere but loopback.
    #[arg(long, env = "MESHGATE_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,

    /// On SIGINT/SIGTERM, how long running streams may take to finish.
    #[arg(long, env = "MESHGATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// A folder outside the mesh whose files bindings may read by absolute path or `file://`
    /// URL (repeatable; the variable takes a comma-separated list). Without it, a binding reads
    /// only inside its own product folder.
    #[arg(long = "storage-root", env = "MESHGATE_STORAGE_ROOTS", value_delimiter = ',')]
    pub storage_roots: Vec<PathBuf>,

    /// Object stores bindings may read (`s3://`, `gs://`, `az://`, `http(s)://`): a YAML file
    /// listing each bucket with its options, credentials by reference and the domains it is open
    /// to; see docs/configuration.md. Without it, bindings read local files only.
    #[arg(long, env = "MESHGATE_STORES")]
    pub stores: Option<PathBuf>,

    /// How long the file listing of a remote location is reused before it is listed again
    /// (local folders are listed on every read).
    #[arg(long, env = "MESHGATE_LISTING_TTL", default_value = "30s", value_parser = parse_duration)]
    pub listing_ttl: Duration,

    /// While some product is refused (its storage was down when it was opened, or its manifests
    /// are wrong), the mesh is reloaded this often; products that loaded are kept as they are.
    /// `0` turns retries off.
    #[arg(long, env = "MESHGATE_RETRY_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub retry_interval: Duration,

    /// Diagnostic: governed reads hand the storage neither the row filter nor the caller's
    /// predicates (every partition and row group is read; results are the same). For measuring
    /// what pushdown saves.
    #[arg(long, env = "MESHGATE_NO_STORAGE_PUSHDOWN")]
    pub no_storage_pushdown: bool,

    /// Do not reload the catalog when files under the mesh folder change.
    #[arg(long, env = "MESHGATE_NO_WATCH")]
    pub no_watch: bool,

    /// Authentication configuration (YAML: trusted issuers, gateway tokens, users file); see
    /// docs/security.md. Required unless --insecure-no-auth.
    #[arg(long, env = "MESHGATE_AUTH")]
    pub auth: Option<PathBuf>,

    /// Serve without authentication, governance or audit: every caller reads everything.
    /// Loopback addresses only; for local experiments and tests.
    #[arg(long, env = "MESHGATE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// The audit log's folder (segments of hash-chained JSON lines and a checkpoint). Required
    /// with --auth.
    #[arg(long, env = "MESHGATE_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,

    /// Size at which an audit segment is closed and the next one started (suffixes KiB, MiB).
    #[arg(long, env = "MESHGATE_AUDIT_SEGMENT_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub audit_segment_size: usize,

    /// How long a call waits for room in the audit queue and for its record to be durable
    /// before it is refused (`UNAVAILABLE`).
    #[arg(long, env = "MESHGATE_AUDIT_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub audit_wait: Duration,

    /// Keep serving when the audit log cannot be written (default: refuse requests).
    #[arg(long, env = "MESHGATE_AUDIT_FAIL_OPEN")]
    pub audit_fail_open: bool,

    /// OpenLineage HTTP endpoint every read and publish is reported to as run events (e.g.
    /// Marquez's `http://marquez:5000/api/v1/lineage`). Delivery never holds up a read.
    #[arg(long, env = "MESHGATE_LINEAGE_URL")]
    pub lineage_url: Option<String>,

    /// Bearer token sent to --lineage-url.
    #[arg(long, env = "MESHGATE_LINEAGE_API_KEY", hide_env_values = true)]
    pub lineage_api_key: Option<String>,

    /// File each OpenLineage run event is appended to, one JSON object per line.
    #[arg(long, env = "MESHGATE_LINEAGE_FILE")]
    pub lineage_file: Option<PathBuf>,

    /// OpenLineage namespace of the jobs (consumers) and datasets (products) reported.
    #[arg(long, env = "MESHGATE_LINEAGE_NAMESPACE", default_value = "meshgate")]
    pub lineage_namespace: String,

    /// Lineage events that may wait for delivery; more are dropped and counted
    /// (`meshgate_lineage_events{outcome="dropped"}`).
    #[arg(long, env = "MESHGATE_LINEAGE_QUEUE", default_value_t = crate::lineage::DEFAULT_QUEUE)]
    pub lineage_queue: usize,

    /// The gateway nodes serving this mesh behind one name (comma-separated
    /// `grpc+tls://host:port`): endpoints of product reads name them round-robin, so shards
    /// spread over the nodes. One node: endpoints say "reuse this connection". None: endpoints
    /// name no location (redeem where the `FlightInfo` came from).
    #[arg(long, env = "MESHGATE_ADVERTISE", value_delimiter = ',')]
    pub advertise: Vec<String>,

    /// The gateway nodes that serve particular products' or domains' reads: a YAML file of
    /// `products: {domain/product: [urls], domain: [urls]}` (see docs/configuration.md). Their
    /// reads' endpoints name those nodes instead of `--advertise`'s.
    #[arg(long, env = "MESHGATE_NODES")]
    pub nodes: Option<PathBuf>,

    /// Interval of HTTP/2 keep-alive pings on every connection (`0s`: none). A peer that does
    /// not answer one within 20 s is disconnected; proxies see a live connection.
    #[arg(long, env = "MESHGATE_HTTP2_KEEPALIVE", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive: Duration,

    /// Name of this replica in audit records.
    #[arg(long, env = "MESHGATE_REPLICA", default_value = "meshgate-0")]
    pub replica: String,

    /// Rows per record batch read from storage (Parquet, CSV, JSON; Arrow IPC files keep the
    /// batches they were written with).
    #[arg(long, env = "MESHGATE_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,

    /// Largest Arrow payload of one streamed message, in bytes (suffixes KiB, MiB). Batches are
    /// cut by the bytes their rows occupy. Clients built on tonic refuse messages over 4 MiB
    /// unless configured otherwise.
    #[arg(long, env = "MESHGATE_MAX_MESSAGE_SIZE", default_value = "2MiB", value_parser = parse_size)]
    pub max_message_size: usize,

    /// Serve string and binary columns as the storage holds them, view types (`Utf8View`,
    /// `BinaryView`) included. Off: announced and streamed as `Utf8`/`Binary`, which every
    /// client reads.
    #[arg(long, env = "MESHGATE_VIEW_TYPES")]
    pub view_types: bool,

    /// Memory the query engine may use, in MiB, across all running requests.
    #[arg(long, env = "MESHGATE_MEMORY_LIMIT_MB", default_value_t = 4096)]
    pub memory_limit_mb: usize,

    /// Memory one SQL statement's operators (sorts, joins, aggregations) may hold, in MiB, within
    /// `--memory-limit-mb`; past it the statement fails with `RESOURCE_EXHAUSTED`.
    #[arg(long, env = "MESHGATE_STATEMENT_MEMORY_MB", default_value_t = 1024)]
    pub statement_memory_mb: usize,

    /// How long one SQL statement may run, from the start of its execution to its last batch
    /// (e.g. `300s`, `10m`; `0s`: no limit); past it the statement fails with `DEADLINE_EXCEEDED`.
    #[arg(long, env = "MESHGATE_STATEMENT_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub statement_timeout: Duration,

    /// Rows one SQL statement may return (0: no limit); past it the statement fails with
    /// `RESOURCE_EXHAUSTED`. Product reads over plain Flight are not limited.
    #[arg(long, env = "MESHGATE_STATEMENT_MAX_ROWS", default_value_t = 0)]
    pub statement_max_rows: u64,

    /// Arrow bytes one publish (DoPut, Flight SQL ingest) may stage before its quality rules are
    /// checked and it is committed; a larger one is refused with `RESOURCE_EXHAUSTED`, nothing
    /// written (publish it in several appends).
    #[arg(long, env = "MESHGATE_MAX_PUBLISH_BYTES", default_value_t = crate::access::publish::DEFAULT_MAX_PUBLISH_BYTES)]
    pub max_publish_bytes: u64,

    /// Memory one stream's batches may pin between storage and the network (suffixes KiB, MiB,
    /// GiB). A client that reads slowly makes its stream read storage only as fast as it
    /// takes the data; the server never holds more for it, however large the product.
    #[arg(long, env = "MESHGATE_STREAM_BUDGET", default_value = "64MiB", value_parser = parse_size)]
    pub stream_budget: usize,

    /// Memory the batches of all streams together may pin; streams wait for room (they are
    /// never refused for it).
    #[arg(long, env = "MESHGATE_STREAMS_BUDGET", default_value = "512MiB", value_parser = parse_size)]
    pub streams_budget: usize,

    /// Reads (DoGet streams) that may run at once; one more is refused with
    /// `RESOURCE_EXHAUSTED` until one ends.
    #[arg(long, env = "MESHGATE_MAX_CONCURRENT_READS", default_value_t = crate::access::DEFAULT_MAX_READS)]
    pub max_concurrent_reads: usize,

    /// Threads that plan and execute reads, apart from those answering calls (0: one per core).
    #[arg(long, env = "MESHGATE_EXEC_THREADS", default_value_t = 0)]
    pub exec_threads: usize,

    /// Address of the HTTP side port: probes (`/healthz`, `/readyz`), `/metrics`, the catalog
    /// API and pages (docs/operations.md). Port 0 picks a free port; `off` closes it.
    #[arg(long, env = "MESHGATE_HTTP_LISTEN", default_value = "127.0.0.1:8816", value_parser = parse_http_listen)]
    pub http_listen: HttpListen,

    /// Who may scrape `/metrics`: `none` (anyone reaching the port) or `admin` (a bearer token of
    /// a principal allowed to operate the gateway).
    #[arg(long, env = "MESHGATE_METRICS_AUTH", value_enum, default_value = "none")]
    pub metrics_auth: crate::http::MetricsAuth,

    /// Consumers labelled by name in metrics; later ones are counted together as `_other`.
    #[arg(long, env = "MESHGATE_METRICS_MAX_CONSUMERS", default_value_t = crate::metrics::DEFAULT_MAX_CONSUMERS)]
    pub metrics_max_consumers: usize,

    /// Mark the catalog's cookies `Secure` (the HTTP port is reached through a TLS-terminating
    /// proxy).
    #[arg(long, env = "MESHGATE_HTTP_COOKIE_SECURE")]
    pub http_cookie_secure: bool,

    /// The Flight address clients use, shown in the catalog's snippets (default:
    /// `grpc://` or `grpc+tls://` and the address the gateway listens on).
    #[arg(long, env = "MESHGATE_FLIGHT_URL")]
    pub flight_url: Option<String>,

    /// How often the contracts' quality rules without a cron `schedule` are checked; rules are
    /// also checked when a product's data changes. `0s` turns scheduled checks off.
    #[arg(long, env = "MESHGATE_QUALITY_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub quality_interval: Duration,

    /// JSON-lines file that quality outcomes are appended to and read back from at start
    /// (default: outcomes are kept in memory only).
    #[arg(long, env = "MESHGATE_QUALITY_LOG")]
    pub quality_log: Option<PathBuf>,
}

/// Where the HTTP side port listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpListen(pub Option<SocketAddr>);

/// Parses `--http-listen`: an address, or `off`.
pub fn parse_http_listen(s: &str) -> Result<HttpListen, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(HttpListen(None));
    }
    s.trim()
        .parse()
        .map(|a| HttpListen(Some(a)))
        .map_err(|_| format!("`{s}` is not an address (e.g. 127.0.0.1:8816) or `off`"))
}

impl GatewayConfig {
    /// A configuration for `mesh` on `127.0.0.1:0` with defaults and without authentication
    /// (tests, embedding).
    pub fn for_mesh(mesh: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mesh: Some(mesh.into()),
            ticket_key: None,
            ticket_ttl: Duration::from_secs(3600),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            allow_plaintext: false,
            shutdown_grace: Duration::from_secs(10),
            no_watch: false,
            storage_roots: Vec::new(),
            stores: None,
            listing_ttl: Duration::from_secs(30),
            retry_interval: Duration::from_secs(30),
            no_storage_pushdown: false,
            auth: None,
            insecure_no_auth: true,
            advertise: Vec::new(),
            nodes: None,
            http2_keepalive: Duration::from_secs(30),
            lineage_url: None,
            lineage_api_key: None,
            lineage_file: None,
            lineage_namespace: "meshgate".into(),
            lineage_queue: crate::lineage::DEFAULT_QUEUE,
            audit_log: None,
            audit_segment_size: 64 << 20,
            audit_wait: Duration::from_secs(5),
            audit_fail_open: false,
            replica: "meshgate-0".into(),
            batch_size: DEFAULT_BATCH_SIZE,
            max_message_size: crate::flight::wire::DEFAULT_MAX_MESSAGE_BYTES,
            view_types: false,
            memory_limit_mb: 4096,
            statement_memory_mb: 1024,
            statement_timeout: Duration::from_secs(300),
            statement_max_rows: 0,
            max_publish_bytes: crate::access::publish::DEFAULT_MAX_PUBLISH_BYTES,
            max_concurrent_reads: crate::access::DEFAULT_MAX_READS,
            stream_budget: 64 << 20,
            streams_budget: 512 << 20,
            exec_threads: 0,
            http_listen: HttpListen(None),
            metrics_auth: crate::http::MetricsAuth::None,
            metrics_max_consumers: crate::metrics::DEFAULT_MAX_CONSUMERS,
            http_cookie_secure: false,
            flight_url: None,
            quality_interval: Duration::from_secs(3600),
            quality_log: None,
        }
    }
}

/// Default rows per batch read from storage. Measured with `bench/run.sh` on TPC-H lineitem:
/// 65,536-row batches read a Parquet product ~20% faster than 8,192-row ones and an IPC product
/// ~10% faster (bench/RESULTS.md); pyarrow's C++ server also does best near 64k rows.
pub const DEFAULT_BATCH_SIZE: usize = 65_536;

/// Parses a byte size: `1048576`, `512KiB`, `2MiB`, `1GiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n.parse().map_err(|_| format!("`{s}` is not a size; write e.g. 2MiB, 512KiB or 1048576"))?;
    let k = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unit `{other}` in `{s}` is not one of B, KiB, MiB, GiB")),
    };
    match n.checked_mul(k) {
        Some(0) | None => Err(format!("`{s}` is not a usable size; give a positive size such as 2MiB")),
        Some(v) => Ok(v),
    }
}

/// Parses `500ms`, `30s`, `15m`, `2h` or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|_| format!("`{s}` is not a duration; write e.g. 250ms, 30s, 15m or 1h"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("2MB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
