//! The audit log: one JSON record per outcome, append-only, hash-chained.
//!
//! Handlers take an [`AuditToken`] when a call starts, tell it what was decided and planned, and
//! finish it with the outcome; a token dropped unfinished (a client that went away) records a
//! `cancelled` outcome. Records go through a bounded channel to one writer task that assigns the
//! chain fields (`seq`, `prev_hash`, `hash`), appends a line, and flushes at least every second
//! and on shutdown. When the log cannot be written, calls fail closed with `UNAVAILABLE`
//! unless the gateway is configured to fail open.
//!
//! Never in a record: tokens, passwords, unmasked values. Never a float either: the chain is
//! verified by re-hashing parsed records, and floats do not round-trip exactly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

pub mod chain;
pub mod product;

use crate::auth::Principal;
use crate::text::cut;

/// Result with the audit [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why auditing failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log cannot take records: requests must not proceed (fail closed).
    #[error("the audit log cannot be written; requests are refused until it can")]
    Unavailable,
    /// The existing log is not a valid chain; the gateway will not append to it.
    #[error("the audit log {path} is broken at line {line}: {reason}; move it aside (and investigate) before starting")]
    Broken {
        /// File.
        path: String,
        /// First broken line.
        line: usize,
        /// Why.
        reason: String,
    },
    /// Opening the file failed.
    #[error("cannot open the audit log {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Who called, from where.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Client {
    /// Peer address.
    pub address: Option<String>,
    /// `user-agent` header.
    pub user_agent: Option<String>,
}

/// What was read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resource {
    /// Domain.
    pub domain: String,
    /// Product.
    pub product: String,
    /// Port.
    pub port: String,
    /// Contract id.
    pub contract_id: String,
    /// Contract version.
    pub contract_version: String,
    /// Columns returned.
    pub columns: Vec<String>,
}

/// The policy decision.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Decision {
    /// `allow` or `deny`.
    pub effect: String,
    /// Policies that decided.
    pub policy_ids: Vec<String>,
    /// `column: strategy` for each masked column.
    pub masks: Vec<String>,
    /// Row filters applied, as expressions.
    pub row_filters: Vec<String>,
}

/// The audit log handle. Cheap to share.
#[derive(Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    /// Owned by the writer: false after a failed write, true again after a good one.
    healthy: Arc<AtomicBool>,
    /// Failed authentications recorded per source address in the current minute.
    auth_failures: moka::sync::Cache<String, Arc<std::sync::atomic::AtomicU32>>,
    /// Failed-authentication records not written (per-source limit or a full queue).
    auth_failures_suppressed: std::sync::atomic::AtomicU64,
    fail_open: bool,
    replica: String,
    path: PathBuf,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
enum Msg {
    Record(Value),
    Flush(oneshot::Sender<()>),
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, checking the existing chain, and starts the writer.
    pub async fn open(path: &Path, fail_open: bool, replica: &str) -> Result<Arc<Self>> {
        Self::open_with_queue(path, fail_open, replica, 16_384).await
    }

    async fn open_with_queue(path: &Path, fail_open: bool, replica: &str, queue: usize) -> Result<Arc<Self>> {
        let io = |source| Error::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        let existing = match tokio::fs::read_to_string(path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let (seq, prev) = chain::verify(&existing).map_err(|b| Error::Broken {
            path: path.display().to_string(),
            line: b.line,
            reason: b.reason,
        })?;
        let file = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await.map_err(io)?;
        let (tx, rx) = mpsc::channel(queue);
        let healthy = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(write_loop(rx, file, seq, prev, Arc::clone(&healthy)));
        Ok(Arc::new(Self {
            tx,
            healthy,
            auth_failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            auth_failures_suppressed: std::sync::atomic::AtomicU64::new(0),
            fail_open,
            replica: replica.to_string(),
            path: path.to_path_buf(),
            task: std::sync::Mutex::new(Some(task)),
        }))
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether calls may proceed: the log is writable, or the gateway fails open.
    pub fn check(&self) -> Result<()> {
        if self.healthy.load(Ordering::Relaxed) || self.fail_open { Ok(()) } else { Err(Error::Unavailable) }
    }

    fn send(&self, mut record: Value) -> Result<()> {
        record["replica"] = json!(self.replica);
        match self.tx.try_send(Msg::Record(record)) {
            Ok(()) => Ok(()),
            // A full queue refuses this record (and so this call), but says nothing about the
            // writer: health is the writer's to report.
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("audit queue full: a record was refused");
                if self.fail_open { Ok(()) } else { Err(Error::Unavailable) }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit record dropped: the writer is gone");
                self.healthy.store(false, Ordering::Relaxed);
                if self.fail_open { Ok(()) } else { Err(Error::Unavailable) }
            }
        }
    }

    /// Failed-authentication records not written so far (per-source limit, full queue).
    pub fn auth_failures_suppressed(&self) -> u64 {
        self.auth_failures_suppressed.load(Ordering::Relaxed)
    }

    /// Writes everything sent so far to disk.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Flushes and stops the writer.
    pub async fn close(&self) {
        self.flush().await;
        let task = self.task.lock().expect("audit lock").take();
        if let Some(t) = task {
            t.abort();
            // Wait until the writer is really gone, so later records fail instead of queueing.
            let _ = t.await;
        }
    }

    /// Records an authentication failure, on a path that can never refuse other calls: at most
    /// [`AUTH_FAILURES_PER_SOURCE`] records per source address a minute, never waiting for room
    /// and never touching the log's health; what is not written is counted
    /// ([`AuditLog::auth_failures_suppressed`]). Unauthenticated callers cannot fill the queue
    /// that reads need.
    pub fn auth_failure(&self, rpc: &str, client: Client, reason: &str) {
        let source = client.address.as_deref().and_then(|a| a.rsplit_once(':').map(|(ip, _)| ip.to_string()));
        let seen = self
            .auth_failures
            .get_with(source.unwrap_or_default(), || Arc::new(std::sync::atomic::AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed);
        // Leave most of the queue to calls that are audited fail-closed.
        let room = self.tx.capacity() > self.tx.max_capacity() / 2;
        if seen >= AUTH_FAILURES_PER_SOURCE || !room {
            self.auth_failures_suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut r = base("authentication_failure", rpc, &client, None);
        r["replica"] = json!(self.replica);
        let r = with_outcome(r, "UNAUTHENTICATED", Some(&cut(reason)), 0, 0, Duration::ZERO);
        if self.tx.try_send(Msg::Record(r)).is_err() {
            self.auth_failures_suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a successful login (`Handshake`): who, from where, and how.
    pub fn login(&self, client: Client, actor: &Principal) {
        let r = base("login", "Handshake", &client, Some(actor));
        let _ = self.send(with_outcome(r, "OK", None, 0, 0, Duration::ZERO));
    }

    /// Starts the record of one call; fails when the log cannot be written (fail closed).
    pub fn begin(self: &Arc<Self>, rpc: &str, client: Client, actor: &Principal) -> Result<AuditToken> {
        self.check()?;
        Ok(AuditToken {
            log: Arc::clone(self),
            record: Some(base("read", rpc, &client, Some(actor))),
            started: Instant::now(),
            rows: 0,
            bytes: 0,
        })
    }
}

/// Failed authentications recorded per source address and minute; the rest are counted.
pub const AUTH_FAILURES_PER_SOURCE: u32 = 20;

/// At most this many roles are recorded per actor. Every value a caller influences (user agent,
/// subject, roles, ...) is cut by [`cut`], so one request cannot write a large record.
const MAX_ROLES: usize = 32;

fn base(kind: &str, rpc: &str, client: &Client, actor: Option<&Principal>) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "kind": kind,
        "rpc": cut(rpc),
        "client": {
            "address": client.address.as_deref().map(cut),
            "user_agent": client.user_agent.as_deref().map(cut),
        },
        "actor": actor.map(|p| json!({
            "sub": cut(&p.subject),
            "iss": cut(&p.issuer),
            "auth_method": p.method,
            "roles": p.roles.iter().take(MAX_ROLES).map(|r| cut(r)).collect::<Vec<_>>(),
            "purpose": p.purpose.as_deref().map(cut),
        })),
    })
}

/// What an audit record says about a failure: its code's meaning, never the error's text, which
/// can carry data values (a cast error quotes the value it could not cast) or megabytes of input.
fn value_free(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "ok",
        C::Cancelled => "the caller cancelled",
        C::Unknown | C::Internal | C::DataLoss => "the gateway failed (details under the error id in the gateway log)",
        C::InvalidArgument | C::OutOfRange => "the request was invalid",
        C::DeadlineExceeded => "a time limit was reached",
        C::NotFound => "no such product, port or action, or not visible to the caller",
        C::AlreadyExists | C::Aborted => "the read was cut short",
        C::PermissionDenied => "refused by policy",
        C::ResourceExhausted => "a limit was reached",
        C::FailedPrecondition => "the request no longer matches the catalog",
        C::Unimplemented => "not supported",
        C::Unavailable => "storage or the audit log was unavailable",
        C::Unauthenticated => "the caller was not authenticated",
    }
}

fn with_outcome(mut r: Value, status: &str, message: Option<&str>, rows: u64, bytes: u64, took: Duration) -> Value {
    r["outcome"] = json!({
        "status": status,
        "message": message,
        "rows": rows,
        "bytes": bytes,
        // Integers only: floats do not survive a JSON round trip exactly, and the hash is
        // recomputed from the parsed record.
        "duration_us": u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
    });
    r
}

/// The record of one call, from start to outcome.
#[derive(Debug)]
pub struct AuditToken {
    log: Arc<AuditLog>,
    record: Option<Value>,
    started: Instant,
    rows: u64,
    bytes: u64,
}

impl AuditToken {
    fn set(&mut self, key: &str, value: Value) {
        if let Some(r) = self.record.as_mut() {
            r[key] = value;
        }
    }

    /// Notes the request and ticket ids.
    pub fn ids(&mut self, request_id: &str, ticket_id: Option<&str>) {
        self.set("request_id", json!(request_id));
        self.set("ticket_id", json!(ticket_id));
    }

    /// Notes what is read.
    pub fn resource(&mut self, r: &Resource) {
        self.set("resource", json!(r));
    }

    /// Notes the decision.
    pub fn decision(&mut self, d: &Decision) {
        if d.effect == "deny" {
            self.set("kind", json!("denied"));
        }
        self.set("decision", json!(d));
    }

    /// Counts streamed data.
    pub fn add(&mut self, rows: u64, bytes: u64) {
        self.rows += rows;
        self.bytes += bytes;
    }

    /// Finishes with success.
    pub fn ok(mut self) -> Result<()> {
        self.finish("OK", None)
    }

    /// Finishes with a failure; the record keeps the code and a value-free description.
    pub fn fail(mut self, status: &tonic::Status) -> Result<()> {
        let code = format!("{:?}", status.code());
        self.finish(&code, Some(value_free(status.code())))
    }

    fn finish(&mut self, status: &str, message: Option<&str>) -> Result<()> {
        match self.record.take() {
            Some(r) => self.log.send(with_outcome(r, status, message, self.rows, self.bytes, self.started.elapsed())),
            None => Ok(()),
        }
    }
}

impl Drop for AuditToken {
    fn drop(&mut self) {
        let _ = self.finish("CANCELLED", Some("the call ended before its outcome was recorded"));
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<Msg>,
    file: tokio::fs::File,
    mut seq: u64,
    mut prev: String,
    healthy: Arc<AtomicBool>,
) {
    let mut out = tokio::io::BufWriter::new(file);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let result = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Record(mut r)) => {
                    r["seq"] = json!(seq);
                    r["prev_hash"] = json!(prev);
                    let hash = chain::hash_of(&r);
                    r["hash"] = json!(hash);
                    let mut line = r.to_string();
                    line.push('\n');
                    let written = out.write_all(line.as_bytes()).await;
                    if written.is_ok() {
                        seq += 1;
                        prev = hash;
                    }
                    written
                }
                Some(Msg::Flush(ack)) => {
                    let flushed = out.flush().await;
                    let _ = ack.send(());
                    flushed
                }
                None => {
                    let _ = out.flush().await;
                    return;
                }
            },
            _ = tick.tick() => out.flush().await,
        };
        if result.is_ok() {
            // A transient failure heals with the next good write.
            healthy.store(true, Ordering::Relaxed);
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "writing the audit log failed; refusing requests");
            healthy.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fails_closed_when_records_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("a.jsonl"), false, "r0").await.unwrap();
        let p = Principal::anonymous();
        log.begin("DoGet", Client::default(), &p).unwrap().ok().unwrap();
        log.flush().await;
        // The writer is gone: the next record cannot be delivered, so that call fails and every
        // later call is refused before it starts.
        log.close().await;
        let token = log.begin("DoGet", Client::default(), &p).unwrap();
        assert!(matches!(token.ok(), Err(Error::Unavailable)));
        assert!(matches!(log.begin("DoGet", Client::default(), &p), Err(Error::Unavailable)));
        let text = std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap();
        assert_eq!(chain::verify(&text).unwrap().0, 1);
    }

    #[tokio::test]
    async fn failed_logins_cannot_close_the_log_for_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open_with_queue(&dir.path().join("a.jsonl"), false, "r0", 8).await.unwrap();
        // A flood of failed logins from many addresses, faster than the writer can run (this
        // loop never yields to it).
        for i in 0..1000 {
            let client = Client { address: Some(format!("10.0.{}.{}:5000", i / 250, i % 250)), user_agent: None };
            log.auth_failure("Handshake", client, "unknown user or wrong password");
        }
        assert!(log.check().is_ok(), "the flood left the log healthy");
        assert!(log.auth_failures_suppressed() >= 990);
        let p = Principal::anonymous();
        log.begin("DoGet", Client::default(), &p).unwrap().ok().unwrap();
        log.flush().await;
        let text = std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap();
        assert!(text.lines().last().unwrap().contains("\"DoGet\""), "the read was recorded");
        // One address alone is limited too.
        for _ in 0..100 {
            let client = Client { address: Some("192.0.2.7:1".into()), user_agent: None };
            log.auth_failure("Handshake", client, "unknown user or wrong password");
            log.flush().await;
        }
        let text = std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap();
        let from_one = text.lines().filter(|l| l.contains("192.0.2.7")).count();
        assert_eq!(from_one, AUTH_FAILURES_PER_SOURCE as usize);
    }

    #[tokio::test]
    async fn fail_open_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("a.jsonl"), true, "r0").await.unwrap();
        log.close().await;
        let p = Principal::anonymous();
        log.begin("DoGet", Client::default(), &p).unwrap().ok().unwrap();
        assert!(log.begin("DoGet", Client::default(), &p).is_ok());
    }

    #[tokio::test]
    async fn refuses_to_append_to_a_broken_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "{\"seq\":5}\n").unwrap();
        assert!(matches!(AuditLog::open(&path, false, "r0").await, Err(Error::Broken { line: 1, .. })));
    }
}
