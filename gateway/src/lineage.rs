//! OpenLineage run events: which consumer read which products, and who published which versions.
//!
//! ```text
//!  read starts streaming ─► START ─┬─► COMPLETE  (rows and bytes delivered)
//!  publish checked       ─► START  ├─► FAIL      (the message the client got)
//!                                  └─► ABORT     (the client went away mid-stream)
//!        │
//!        ▼ try_send (never waits)
//!  bounded queue ──► one drain task ──► JSON-lines file (--lineage-file)
//!        │                          └─► HTTP POST      (--lineage-url, e.g. Marquez /api/v1/lineage)
//!        └─ full: the event is dropped and counted (meshgate_lineage_events{outcome="dropped"})
//! ```
//!
//! The job is the consumer: its name is the principal's subject (with `/<purpose>` when the
//! credential declares one), its facets the job type (`READ` or `PUBLISH`), the client (address,
//! user agent) and, for SQL, the statement. Each dataset is a product port, named
//! `<domain>/<product>` in the configured namespace, with the standard `schema`, `ownership` and
//! `version` facets, the custom `meshgate_governance` facet (domain, owner, classification,
//! policies, masks, row filters) and, on inputs, `meshgate_read` (port, contract and the columns
//! the read used). Publishes carry their output with `outputStatistics`.
//!
//! Emission never blocks and never fails a read or a publish: lineage is a record for operators,
//! and the audit log (not this) is the durable account of access.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};

use crate::audit::Client;
use crate::auth::Principal;

/// The OpenLineage run event schema the events follow.
const RUN_EVENT_SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";

/// Where meshgate's custom facets are described.
const CUSTOM_FACETS: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "/blob/main/docs/lineage.md");

/// Events delivered in one go from the queue to the file.
const BATCH: usize = 256;

/// Default bound of the event queue.
pub const DEFAULT_QUEUE: usize = 10_000;

/// Why lineage emission could not be set up (at startup; never during a read).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The JSON-lines file cannot be opened for appending.
    #[error("the lineage file {path} cannot be opened for appending: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP endpoint is not an `http(s)://` URL.
    #[error("the lineage URL `{0}` is not an http:// or https:// URL")]
    Url(String),
    /// The HTTP client cannot be built.
    #[error("the lineage HTTP client cannot be built: {0}")]
    Client(String),
}

/// Where events go, and how many may wait.
#[derive(Debug, Clone)]
pub struct LineageOptions {
    /// OpenLineage HTTP endpoint events are POSTed to, one per request (Marquez:
    /// `http://host:5000/api/v1/lineage`).
    pub url: Option<String>,
    /// Bearer token sent to `url`.
    pub api_key: Option<String>,
    /// File each event is appended to as one JSON line.
    pub file: Option<PathBuf>,
    /// Namespace of the jobs and datasets (products).
    pub namespace: String,
    /// Events that may wait for delivery; more are dropped and counted.
    pub queue: usize,
    /// Time one HTTP delivery may take before it counts as failed.
    pub timeout: Duration,
}

/// Events delivered, dropped (queue full) and failed (a transport refused them).
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The lineage emitter: a bounded queue and the task draining it.
#[derive(Debug)]
pub struct Lineage {
    tx: mpsc::Sender<Value>,
    namespace: String,
    counts: Arc<Counts>,
    closing: Arc<Notify>,
    drained: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Lineage {
    /// Opens the transports in `options` and starts draining; `None` when none is configured.
    pub async fn start(options: LineageOptions) -> Result<Option<Arc<Self>>, Error> {
        if options.url.is_none() && options.file.is_none() {
            return Ok(None);
        }
        let file = match &options.file {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(|source| Error::File { path: path.clone(), source })?;
                }
                let f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|source| Error::File { path: path.clone(), source })?;
                Some(tokio::io::BufWriter::new(f))
            }
            None => None,
        };
        let http = match &options.url {
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Error::Url(url.clone()));
                }
                let client = reqwest::Client::builder()
                    .timeout(options.timeout)
                    .build()
                    .map_err(|e| Error::Client(e.to_string()))?;
                Some(Http { client, url: url.clone(), api_key: options.api_key.clone() })
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let counts = Arc::new(Counts::default());
        let closing = Arc::new(Notify::new());
        let drain = Drain { rx, file, http, counts: Arc::clone(&counts), closing: Arc::clone(&closing), warned: None };
        let task = tokio::spawn(drain.run());
        Ok(Some(Arc::new(Self {
            tx,
            namespace: options.namespace,
            counts,
            closing,
            drained: tokio::sync::Mutex::new(Some(task)),
        })))
    }

    /// Starts a run of `job` over `inputs` (read) and `outputs` (published): emits START. The
    /// run emits COMPLETE or FAIL when told, ABORT when dropped untold.
    pub fn begin(self: &Arc<Self>, job: Job, inputs: Vec<Dataset>, outputs: Vec<Dataset>) -> Run {
        let job_json = job.to_json(&self.namespace);
        let inputs: Vec<Value> = inputs.iter().map(|d| d.to_json(&self.namespace, true)).collect();
        let outputs: Vec<Value> = outputs.iter().map(|d| d.to_json(&self.namespace, false)).collect();
        let run =
            Run { lineage: Arc::clone(self), id: uuid::Uuid::new_v4(), job: job_json, inputs, outputs, ended: false };
        run.emit("START", json!({}));
        run
    }

    /// Events `(sent, dropped, failed)` so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let c = &self.counts;
        (c.sent.load(Ordering::Relaxed), c.dropped.load(Ordering::Relaxed), c.failed.load(Ordering::Relaxed))
    }

    /// Delivers what is queued (waiting at most `wait`), then stops the drain task.
    pub async fn close(&self, wait: Duration) {
        self.closing.notify_one();
        if let Some(task) = self.drained.lock().await.take()
            && tokio::time::timeout(wait, task).await.is_err()
        {
            tracing::warn!(?wait, "lineage events still queued at shutdown were not delivered");
        }
    }

    fn send(&self, event: Value) {
        if self.tx.try_send(event).is_err() {
            let dropped = self.counts.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "the lineage queue is full; events are dropped (reads are not held up)");
            }
        }
    }
}

/// The consumer or producer a run is for.
#[derive(Debug, Clone)]
pub struct Job {
    /// `READ` or `PUBLISH`.
    pub kind: &'static str,
    /// Who.
    pub principal: Principal,
    /// From where.
    pub client: Client,
    /// The SQL statement, for SQL reads.
    pub sql: Option<String>,
}

impl Job {
    fn to_json(&self, namespace: &str) -> Value {
        let p = &self.principal;
        let who = if p.subject.is_empty() { "anonymous" } else { p.subject.as_str() };
        let name = match p.purpose.as_deref().filter(|s| !s.is_empty()) {
            Some(purpose) => format!("{who}/{purpose}"),
            None => who.to_string(),
        };
        let mut facets = json!({
            "jobType": facet("https://openlineage.io/spec/facets/2-0-3/JobTypeJobFacet.json#/$defs/JobTypeJobFacet", json!({
                "processingType": "BATCH",
                "integration": "MESHGATE",
                "jobType": self.kind,
            })),
            "meshgate_consumer": custom("ConsumerJobFacet", json!({
                "subject": p.subject,
                "issuer": p.issuer,
                "purpose": p.purpose,
                "roles": p.roles,
                "domain": p.domain,
                "client": {"address": self.client.address, "userAgent": self.client.user_agent},
                "onBehalfOf": self.client.on_behalf_of,
            })),
        });
        if let Some(sql) = &self.sql {
            facets["sql"] = facet(
                "https://openlineage.io/spec/facets/1-1-0/SQLJobFacet.json#/$defs/SQLJobFacet",
                json!({"query": sql, "dialect": "datafusion"}),
            );
        }
        json!({"namespace": namespace, "name": name, "facets": facets})
    }
}

/// One product port a run reads or writes.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Owning domain.
    pub domain: String,
    /// Product.
    pub product: String,
    /// Port.
    pub port: String,
    /// Contract id and version.
    pub contract: (String, String),
    /// `(name, type)` of the port's columns, as the contract declares them.
    pub fields: Vec<(String, String)>,
    /// Columns the run used (inputs) or wrote (outputs).
    pub columns: Vec<String>,
    /// The data version read or written, when the storage keeps versions.
    pub version: Option<u64>,
    /// Owning team.
    pub owner: Option<String>,
    /// The product's classification (`meshgate.sensitivity`).
    pub classification: String,
    /// Policies that decided the access.
    pub policies: Vec<String>,
    /// `(column, strategy)` of the masks applied.
    pub masks: Vec<(String, String)>,
    /// Row filters applied.
    pub row_filters: Vec<String>,
}

impl Dataset {
    fn to_json(&self, namespace: &str, input: bool) -> Value {
        let fields: Vec<Value> = self.fields.iter().map(|(n, t)| json!({"name": n, "type": t})).collect();
        let mut facets = json!({
            "schema": facet(
                "https://openlineage.io/spec/facets/1-1-1/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
                json!({"fields": fields}),
            ),
            "meshgate_governance": custom("GovernanceDatasetFacet", json!({
                "domain": self.domain,
                "owner": self.owner,
                "classification": self.classification,
                "policies": self.policies,
                "masks": self.masks.iter().map(|(c, s)| json!({"column": c, "strategy": s})).collect::<Vec<_>>(),
                "rowFilters": self.row_filters,
            })),
        });
        if let Some(owner) = &self.owner {
            facets["ownership"] = facet(
                "https://openlineage.io/spec/facets/1-0-1/OwnershipDatasetFacet.json#/$defs/OwnershipDatasetFacet",
                json!({"owners": [{"name": owner, "type": "team"}]}),
            );
        }
        if let Some(v) = self.version {
            facets["version"] = facet(
                "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet",
                json!({"datasetVersion": v.to_string()}),
            );
        }
        let mut out = json!({
            "namespace": namespace,
            "name": format!("{}/{}", self.domain, self.product),
            "facets": facets,
        });
        let access = custom(
            "ReadInputDatasetFacet",
            json!({
                "port": self.port,
                "contractId": self.contract.0,
                "contractVersion": self.contract.1,
                "columns": self.columns,
            }),
        );
        if input {
            out["inputFacets"] = json!({"meshgate_read": access});
        } else {
            out["outputFacets"] = json!({"meshgate_write": access});
        }
        out
    }
}

/// What a finished run delivered or wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivered {
    /// Rows.
    pub rows: u64,
    /// Arrow bytes.
    pub bytes: u64,
    /// The version a publish committed.
    pub version: Option<u64>,
}

/// One run: START was emitted; COMPLETE, FAIL or (when dropped untold) ABORT follows.
#[derive(Debug)]
pub struct Run {
    lineage: Arc<Lineage>,
    id: uuid::Uuid,
    job: Value,
    inputs: Vec<Value>,
    outputs: Vec<Value>,
    ended: bool,
}

impl Run {
    /// The run ended well, having delivered (or written) `done`.
    pub fn complete(mut self, done: Delivered) {
        self.ended = true;
        if let Some(v) = done.version {
            for o in &mut self.outputs {
                o["facets"]["version"] = facet(
                    "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet",
                    json!({"datasetVersion": v.to_string()}),
                );
            }
        }
        if !self.outputs.is_empty() {
            for o in &mut self.outputs {
                o["outputFacets"]["outputStatistics"] = facet(
                    "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet",
                    json!({"rowCount": done.rows, "size": done.bytes}),
                );
            }
        }
        let delivered = custom("DeliveryRunFacet", json!({"rows": done.rows, "bytes": done.bytes}));
        self.emit("COMPLETE", json!({"meshgate_delivery": delivered}));
    }

    /// The run failed with `message` (what the client was told).
    pub fn fail(mut self, message: &str) {
        self.ended = true;
        self.emit("FAIL", json!({"errorMessage": error_facet(message)}));
    }

    fn emit(&self, kind: &str, mut run_facets: Value) {
        run_facets["processing_engine"] = facet(
            "https://openlineage.io/spec/facets/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet",
            json!({"name": "meshgate", "version": env!("CARGO_PKG_VERSION")}),
        );
        let event = json!({
            "eventType": kind,
            "eventTime": crate::quality::rfc3339(SystemTime::now()),
            "run": {"runId": self.id.to_string(), "facets": run_facets},
            "job": self.job,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "producer": env!("CARGO_PKG_REPOSITORY"),
            "schemaURL": RUN_EVENT_SCHEMA,
        });
        self.lineage.send(event);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.ended {
            self.emit(
                "ABORT",
                json!({"errorMessage": error_facet("the client stopped reading before the end of the stream")}),
            );
        }
    }
}

fn error_facet(message: &str) -> Value {
    facet(
        "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
        json!({"message": message, "programmingLanguage": "rust"}),
    )
}

/// A standard facet: `body` with the producer and the facet's schema.
fn facet(schema: &str, mut body: Value) -> Value {
    body["_producer"] = json!(env!("CARGO_PKG_REPOSITORY"));
    body["_schemaURL"] = json!(schema);
    body
}

/// One of meshgate's own facets, described in docs/lineage.md.
fn custom(name: &str, body: Value) -> Value {
    facet(&format!("{CUSTOM_FACETS}#{name}"), body)
}

#[derive(Debug)]
struct Http {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
}

/// The task that delivers queued events, in order, to the file and the HTTP endpoint.
struct Drain {
    rx: mpsc::Receiver<Value>,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    http: Option<Http>,
    counts: Arc<Counts>,
    closing: Arc<Notify>,
    /// When the last delivery failure was logged (failures are logged at most once a minute).
    warned: Option<std::time::Instant>,
}

impl Drain {
    async fn run(mut self) {
        loop {
            let first = tokio::select! {
                biased;
                e = self.rx.recv() => e,
                () = self.closing.notified() => {
                    self.rx.close();
                    self.rx.recv().await
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            self.deliver(batch).await;
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush().await;
        }
    }

    async fn deliver(&mut self, batch: Vec<Value>) {
        // Whether each event reached every transport.
        let mut delivered = vec![true; batch.len()];
        if let Some(f) = self.file.as_mut() {
            let mut text = Vec::new();
            for e in &batch {
                // A `Value` always serializes.
                let _ = serde_json::to_writer(&mut text, e);
                text.push(b'\n');
            }
            let written = async {
                f.write_all(&text).await?;
                f.flush().await
            };
            if let Err(e) = written.await {
                delivered.fill(false);
                self.warn(&format!("writing the lineage file failed: {e}"));
            }
        }
        if let Some(h) = &self.http {
            let mut failures = Vec::new();
            for (i, e) in batch.iter().enumerate() {
                let mut request = h.client.post(&h.url).header("content-type", "application/json").body(e.to_string());
                if let Some(key) = &h.api_key {
                    request = request.bearer_auth(key);
                }
                let outcome = match request.send().await {
                    Ok(r) if r.status().is_success() => continue,
                    Ok(r) => format!("the endpoint answered {}", r.status()),
                    Err(e) => format!("the endpoint cannot be reached: {e}"),
                };
                delivered[i] = false;
                failures.push(outcome);
            }
            if let Some(why) = failures.first() {
                self.warn(why);
            }
        }
        let failed = delivered.iter().filter(|ok| !**ok).count() as u64;
        self.counts.failed.fetch_add(failed, Ordering::Relaxed);
        self.counts.sent.fetch_add(batch.len() as u64 - failed, Ordering::Relaxed);
    }

    fn warn(&mut self, why: &str) {
        let now = std::time::Instant::now();
        if self.warned.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
            self.warned = Some(now);
            tracing::warn!(reason = why, "lineage events could not be delivered; reads go on");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(file: PathBuf, queue: usize) -> LineageOptions {
        LineageOptions {
            url: None,
            api_key: None,
            file: Some(file),
            namespace: "ns".into(),
            queue,
            timeout: Duration::from_secs(1),
        }
    }

    fn job() -> Job {
        let principal = Principal { subject: "alice".into(), purpose: Some("churn".into()), ..Principal::anonymous() };
        Job { kind: "READ", principal, client: Client::default(), sql: None }
    }

    fn dataset() -> Dataset {
        Dataset {
            domain: "sales".into(),
            product: "orders".into(),
            fields: vec![("id".into(), "Int64".into())],
            columns: vec!["id".into()],
            masks: vec![("email".into(), "redact".into())],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn runs_start_and_end_in_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/lineage.jsonl");
        let lineage = Lineage::start(options(path.clone(), 100)).await.unwrap().unwrap();
        lineage.begin(job(), vec![dataset()], Vec::new()).complete(Delivered { rows: 5, bytes: 40, version: None });
        drop(lineage.begin(job(), vec![dataset()], Vec::new()));
        lineage.close(Duration::from_secs(5)).await;
        let events: Vec<Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["eventType"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["START", "COMPLETE", "START", "ABORT"]);
        assert_eq!(events[0]["run"]["runId"], events[1]["run"]["runId"]);
        assert_ne!(events[0]["run"]["runId"], events[2]["run"]["runId"]);
        assert_eq!(events[0]["job"]["name"], "alice/churn");
        let input = &events[0]["inputs"][0];
        assert_eq!((input["namespace"].as_str(), input["name"].as_str()), (Some("ns"), Some("sales/orders")));
        assert_eq!(input["inputFacets"]["meshgate_read"]["columns"], json!(["id"]));
        assert_eq!(input["facets"]["meshgate_governance"]["masks"][0]["strategy"], "redact");
        assert_eq!(events[1]["run"]["facets"]["meshgate_delivery"]["rows"], 5);
        assert!(events[3]["run"]["facets"]["errorMessage"]["message"].as_str().unwrap().contains("stopped reading"));
        assert_eq!(lineage.counts(), (4, 0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let lineage = Lineage::start(options(dir.path().join("l.jsonl"), 1)).await.unwrap().unwrap();
        // On a current-thread runtime the drain task cannot run until this test yields.
        for _ in 0..10 {
            lineage.begin(job(), Vec::new(), Vec::new()).fail("nope");
        }
        lineage.close(Duration::from_secs(5)).await;
        let (sent, dropped, failed) = lineage.counts();
        assert_eq!((sent + dropped, failed), (20, 0));
        assert!(dropped >= 18, "{dropped}");
    }

    #[tokio::test]
    async fn only_http_urls_are_endpoints() {
        let o = LineageOptions { url: Some("ftp://x".into()), file: None, ..options(PathBuf::new(), 1) };
        assert!(matches!(Lineage::start(o).await, Err(Error::Url(_))));
        let none = LineageOptions { url: None, file: None, ..options(PathBuf::new(), 1) };
        assert!(Lineage::start(none).await.unwrap().is_none());
    }
}
