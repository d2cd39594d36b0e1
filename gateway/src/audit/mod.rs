//! The audit log: one JSON record per outcome, append-only, hash-chained, durable before the
//! call it records completes.
//!
//! Handlers take an [`AuditToken`] when a call starts, tell it what was decided and planned, and
//! finish it with the outcome; a read also records its start before its first batch leaves. A
//! token dropped unfinished (a client that went away) records a `CANCELLED` outcome. Records go
//! through a bounded queue to one writer thread ([`writer`]) that chains them and commits them
//! in groups with one sync each; a call that finishes waits (a bounded time) for room in the
//! queue and for its record to be durable, and fails closed with `UNAVAILABLE` when either
//! does not come, unless the gateway is configured to fail open. The files are a folder of
//! segments and a checkpoint ([`segments`]).
//!
//! Failed authentications take another path: never waiting, limited per source address, and
//! what is not written is summed into one summary record a minute.
//!
//! Never in a record: tokens, passwords, unmasked values. Never a float either: the chain is
//! verified by re-hashing parsed records, and floats do not round-trip exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

pub mod chain;
pub mod product;
pub mod segments;
mod writer;

use crate::auth::Principal;
use crate::text::cut;
use writer::Msg;

/// Result with the audit [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why auditing failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log cannot take records: requests must not proceed (fail closed).
    #[error("the audit log cannot be written; requests are refused until it can")]
    Unavailable,
    /// The existing log is broken or cut short; the gateway will not append to it.
    #[error("the audit log in {dir} cannot be continued: {source}; move it aside (and investigate) before starting")]
    Broken {
        /// The log's folder.
        dir: String,
        /// What is wrong.
        source: segments::Error,
    },
    /// Starting the writer failed.
    #[error("cannot start the audit log writer: {0}")]
    Start(std::io::Error),
}

/// How the log behaves.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Keep serving when records cannot be written.
    pub fail_open: bool,
    /// This replica's name in every record.
    pub replica: String,
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes: u64,
    /// How long a call waits for room in the queue and for its record to be durable.
    pub wait: Duration,
    /// Records that may wait for the writer.
    pub queue: usize,
    /// How often suppressed authentication failures are summed into a record.
    pub summary_every: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            fail_open: false,
            replica: "meshgate-0".into(),
            segment_bytes: 64 << 20,
            wait: Duration::from_secs(5),
            queue: 16_384,
            summary_every: Duration::from_secs(60),
        }
    }
}

/// Who called, from where.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Client {
    /// Peer address.
    pub address: Option<String>,
    /// `user-agent` header.
    pub user_agent: Option<String>,
    /// The end user a calling gateway reads for (its `x-meshgate-on-behalf-of` header), as that
    /// gateway names it: recorded, never used to decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
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

/// Failed authentications not written one by one, per source, until the next summary.
#[derive(Debug, Default)]
struct Suppressed {
    by_source: HashMap<String, u64>,
    other: u64,
}

/// Sources named in one summary record; the rest are summed as `other`.
const SUMMARY_SOURCES: usize = 32;

/// The audit log handle. Cheap to share.
#[derive(Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    /// Owned by the writer: false after a failed commit, true again after a good one.
    healthy: Arc<AtomicBool>,
    closed: AtomicBool,
    /// Failed authentications recorded per source address in the current minute.
    auth_failures: moka::sync::Cache<String, Arc<AtomicU32>>,
    /// Failed-authentication records not written (per-source limit or a full queue), in total.
    auth_failures_suppressed: AtomicU64,
    suppressed: Mutex<Suppressed>,
    /// Calls whose outcome is not yet handed to the writer.
    calls: Mutex<HashMap<u64, Arc<Call>>>,
    next_call: AtomicU64,
    calls_done: Notify,
    options: AuditOptions,
    dir: PathBuf,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// Opens (or creates) the log in the folder `dir`, checking its newest segment against the
    /// checkpoint, and starts the writer.
    pub async fn open(dir: &Path, options: AuditOptions) -> Result<Arc<Self>> {
        let broken = |source| Error::Broken { dir: dir.display().to_string(), source };
        let owned = dir.to_path_buf();
        let healthy = Arc::new(AtomicBool::new(true));
        let h = Arc::clone(&healthy);
        let segment_bytes = options.segment_bytes;
        let writer = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&owned)
                .map_err(|source| segments::Error::Io { path: owned.display().to_string(), source })?;
            let resumed = segments::resume(&owned)?;
            writer::Writer::new(owned, resumed, segment_bytes, h)
        })
        .await
        .map_err(|e| Error::Start(std::io::Error::other(e.to_string())))?
        .map_err(broken)?;
        let (tx, rx) = mpsc::channel(options.queue);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(Error::Start)?;
        let log = Arc::new(Self {
            tx,
            healthy,
            closed: AtomicBool::new(false),
            auth_failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            auth_failures_suppressed: AtomicU64::new(0),
            suppressed: Mutex::new(Suppressed::default()),
            calls: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(0),
            calls_done: Notify::new(),
            dir: dir.to_path_buf(),
            writer: Mutex::new(Some(thread)),
            options,
        });
        tokio::spawn(summarize(Arc::downgrade(&log)));
        Ok(log)
    }

    /// The log's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records queued and not yet handed to the writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether calls may proceed: the log is writable, or the gateway fails open.
    pub fn check(&self) -> Result<()> {
        let up = self.healthy.load(Ordering::Relaxed) && !self.closed.load(Ordering::Relaxed);
        if up || self.options.fail_open { Ok(()) } else { Err(Error::Unavailable) }
    }

    fn refused(&self) -> Result<()> {
        if self.options.fail_open { Ok(()) } else { Err(Error::Unavailable) }
    }

    /// Hands `record` to the writer and waits until it is durable: at most the configured wait
    /// for room and for the sync together.
    async fn commit(&self, mut record: Value) -> Result<()> {
        record["replica"] = json!(self.options.replica);
        let (ack, done) = oneshot::channel();
        let durable = async {
            self.tx.send(Msg::Record(record, Some(ack))).await.ok()?;
            done.await.ok()
        };
        match tokio::time::timeout(self.options.wait, durable).await {
            Ok(Some(true)) => Ok(()),
            Ok(Some(false)) => {
                tracing::warn!("an audit record could not be written: the call is refused");
                self.refused()
            }
            Ok(None) => {
                tracing::error!("audit record dropped: the writer is gone");
                self.healthy.store(false, Ordering::Relaxed);
                self.refused()
            }
            Err(_) => {
                tracing::warn!(wait = ?self.options.wait, "no room in the audit queue, or no sync, in time: the call is refused");
                self.refused()
            }
        }
    }

    /// Failed-authentication records not written one by one so far (per-source limit, full
    /// queue); they are summed into summary records.
    pub fn auth_failures_suppressed(&self) -> u64 {
        self.auth_failures_suppressed.load(Ordering::Relaxed)
    }

    /// Waits until everything sent so far is durable.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Waits up to `within` until every started call has handed its outcome to the writer;
    /// false if some had not by then.
    pub async fn drained(&self, within: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.calls_done.notified();
                if self.calls.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Records the outcome of every call still running as ended by the shutdown (rows and bytes
    /// so far), durably, whether or not its stream is ever polled again; those calls' own
    /// outcomes are then no-ops.
    pub async fn end_open_calls(&self) {
        let open: Vec<Arc<Call>> = self.calls.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let ends = open.iter().filter_map(|call| {
            let outcome = call.outcome("Unavailable", Some("the gateway shut down before the call ended"))?;
            Some(self.commit(outcome))
        });
        let ended = futures::future::join_all(ends).await;
        if ended.iter().any(Result::is_err) {
            tracing::error!("some calls ended by the shutdown could not be recorded");
        }
    }

    /// Writes the pending authentication-failure summary, commits everything queued, and stops
    /// the writer. Later calls are refused.
    pub async fn close(&self) {
        self.write_summary();
        self.closed.store(true, Ordering::Relaxed);
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
        let thread = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Records an authentication failure, on a path that can never refuse other calls: at most
    /// [`AUTH_FAILURES_PER_SOURCE`] records per source address a minute, never waiting for room
    /// and never touching the log's health; what is not written is summed per source into a
    /// summary record each minute. Unauthenticated callers cannot fill the queue reads need.
    pub fn auth_failure(&self, rpc: &str, client: Client, reason: &str) {
        let source = client.address.as_deref().and_then(|a| a.rsplit_once(':').map(|(ip, _)| ip.to_string()));
        let source = source.unwrap_or_default();
        let seen =
            self.auth_failures.get_with(source.clone(), || Arc::new(AtomicU32::new(0))).fetch_add(1, Ordering::Relaxed);
        // Leave most of the queue to calls that are audited fail-closed.
        let room = self.tx.capacity() > self.tx.max_capacity() / 2;
        let mut written = false;
        if seen < AUTH_FAILURES_PER_SOURCE && room {
            let mut r = base("authentication_failure", rpc, &client, None);
            r["replica"] = json!(self.options.replica);
            let r = with_outcome(r, "UNAUTHENTICATED", Some(&cut(reason)), 0, 0, Duration::ZERO);
            written = self.tx.try_send(Msg::Record(r, None)).is_ok();
        }
        if !written {
            self.auth_failures_suppressed.fetch_add(1, Ordering::Relaxed);
            let mut s = self.suppressed.lock().unwrap_or_else(|p| p.into_inner());
            let known = s.by_source.len() < 10_000 || s.by_source.contains_key(&source);
            if known {
                *s.by_source.entry(source).or_default() += 1;
            } else {
                s.other += 1;
            }
        }
    }

    /// Sums the failures suppressed since the last summary into one record (if any).
    fn write_summary(&self) {
        let taken = std::mem::take(&mut *self.suppressed.lock().unwrap_or_else(|p| p.into_inner()));
        let total: u64 = taken.by_source.values().sum::<u64>() + taken.other;
        if total == 0 {
            return;
        }
        let mut sources: Vec<(String, u64)> = taken.by_source.into_iter().collect();
        sources.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let named: Vec<String> =
            sources.iter().take(SUMMARY_SOURCES).map(|(s, n)| format!("{}: {n}", cut(s))).collect();
        let mut r = base("authentication_failures_suppressed", "", &Client::default(), None);
        r["replica"] = json!(self.options.replica);
        r["suppressed"] = json!({ "total": total, "sources": named });
        let r = with_outcome(
            r,
            "UNAUTHENTICATED",
            Some("failed authentications beyond the per-source limit, summed"),
            0,
            0,
            Duration::ZERO,
        );
        if self.tx.try_send(Msg::Record(r, None)).is_err() {
            tracing::warn!(total, "the authentication-failure summary could not be queued");
        }
    }

    /// Records a successful login (`Handshake`): who, from where, and how; durable before the
    /// token is handed out.
    pub async fn login(&self, client: Client, actor: &Principal) -> Result<()> {
        self.check()?;
        let r = base("login", "Handshake", &client, Some(actor));
        self.commit(with_outcome(r, "OK", None, 0, 0, Duration::ZERO)).await
    }

    /// Starts the record of one call; fails when the log cannot be written (fail closed).
    pub fn begin(self: &Arc<Self>, rpc: &str, client: Client, actor: &Principal) -> Result<AuditToken> {
        self.check()?;
        let call = Arc::new(Call {
            record: Mutex::new(Some(base("read", rpc, &client, Some(actor)))),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
        });
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Arc::clone(&call));
        Ok(AuditToken { open: Some(OpenCall { log: Arc::clone(self), id }), call })
    }
}

/// Writes a summary of suppressed authentication failures every `summary_every`, while the log
/// is alive.
async fn summarize(log: Weak<AuditLog>) {
    let every = match log.upgrade() {
        Some(l) => l.options.summary_every,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match log.upgrade() {
            Some(l) if !l.closed.load(Ordering::Relaxed) => l.write_summary(),
            _ => return,
        }
    }
}

/// A started call, registered with the log until its outcome is handed to the writer.
#[derive(Debug)]
struct OpenCall {
    log: Arc<AuditLog>,
    id: u64,
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        let mut calls = self.log.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.remove(&self.id);
        if calls.is_empty() {
            self.log.calls_done.notify_waiters();
        }
    }
}

/// What is known of a running call. Its record is taken exactly once: by the call's outcome, or
/// by the shutdown ending it.
#[derive(Debug)]
struct Call {
    record: Mutex<Option<Value>>,
    rows: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
}

impl Call {
    /// The outcome record, unless it was already taken.
    fn outcome(&self, status: &str, message: Option<&str>) -> Option<Value> {
        let r = self.record.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        let (rows, bytes) = (self.rows.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed));
        Some(with_outcome(r, status, message, rows, bytes, self.started.elapsed()))
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
        // `time` is stamped by the writer (when the record is logged, never going back);
        // `started` is when the call began.
        "started": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "kind": kind,
        "rpc": cut(rpc),
        "client": {
            "address": client.address.as_deref().map(cut),
            "user_agent": client.user_agent.as_deref().map(cut),
            "on_behalf_of": client.on_behalf_of.as_deref().map(cut),
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
    /// Registers the call as open until its outcome is handed over (taken by a drop that has to
    /// queue the record from a task).
    open: Option<OpenCall>,
    call: Arc<Call>,
}

impl AuditToken {
    fn log(&self) -> Option<&Arc<AuditLog>> {
        self.open.as_ref().map(|o| &o.log)
    }

    /// Records the call as a `kind` of call other than a read (`publish`).
    pub fn kind(&mut self, kind: &str) {
        self.set("kind", json!(kind));
    }

    /// Records the data version a publish committed, or the one a pinned read read.
    pub fn version(&mut self, version: u64) {
        self.set("version", json!(version));
    }

    fn set(&mut self, key: &str, value: Value) {
        if let Some(r) = self.call.record.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            r[key] = value;
        }
    }

    /// Notes the request and ticket ids.
    pub fn ids(&mut self, request_id: &str, ticket_id: Option<&str>) {
        self.set("request_id", json!(request_id));
        self.set("ticket_id", json!(ticket_id));
    }

    /// Notes what is read: `resource` is the first product port, and a read of several (a SQL
    /// statement joining products) lists them all under `resources` as well.
    pub fn resources(&mut self, r: &[Resource]) {
        if let Some(first) = r.first() {
            self.set("resource", json!(first));
        }
        if r.len() > 1 {
            self.set("resources", json!(r));
        }
    }

    /// Notes the decision.
    pub fn decision(&mut self, d: &Decision) {
        if d.effect == "deny" {
            self.set("kind", json!("denied"));
        }
        self.set("decision", json!(d));
    }

    /// Records that data is about to leave (a `read_start` record with what is known so far,
    /// same `event_id`), durable before this returns.
    pub async fn started(&mut self) -> Result<()> {
        let Some(log) = self.log().cloned() else { return Ok(()) };
        let start = self.call.record.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(mut start) = start else { return Ok(()) };
        start["kind"] = json!("read_start");
        log.commit(start).await
    }

    /// Counts streamed data.
    pub fn add(&mut self, rows: u64, bytes: u64) {
        self.call.rows.fetch_add(rows, Ordering::Relaxed);
        self.call.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Finishes with success, once the record is durable.
    pub async fn ok(self) -> Result<()> {
        self.finish("OK", None).await
    }

    /// Finishes with a failure, once the record is durable; the record keeps the code and a
    /// value-free description.
    pub async fn fail(self, status: &tonic::Status) -> Result<()> {
        let code = format!("{:?}", status.code());
        self.finish(&code, Some(value_free(status.code()))).await
    }

    async fn finish(&self, status: &str, message: Option<&str>) -> Result<()> {
        let Some(log) = self.log() else { return Ok(()) };
        match self.call.outcome(status, message) {
            Some(r) => log.commit(r).await,
            // Ended by the shutdown, which recorded it.
            None => Err(Error::Unavailable),
        }
    }
}

impl Drop for AuditToken {
    /// A call dropped before its outcome (a client gone) is recorded as `CANCELLED`. Nothing
    /// waits here: the record is queued, or, when the queue is full, queued from a task that
    /// keeps the call registered as open until it is.
    fn drop(&mut self) {
        let Some(open) = self.open.take() else { return };
        let Some(mut r) = self.call.outcome("CANCELLED", Some("the call ended before its outcome was recorded")) else {
            return;
        };
        r["replica"] = json!(open.log.options.replica);
        match open.log.tx.try_send(Msg::Record(r, None)) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(Msg::Record(r, _))) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let wait = open.log.options.wait;
                        if open.log.tx.send_timeout(Msg::Record(r, None), wait).await.is_err() {
                            tracing::error!("the record of a cancelled call could not be queued");
                        }
                        drop(open);
                    });
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> AuditOptions {
        AuditOptions { replica: "r0".into(), ..AuditOptions::default() }
    }

    fn text(dir: &Path) -> String {
        segments::read_all(dir).unwrap()
    }

    #[tokio::test]
    async fn fails_closed_when_records_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), options()).await.unwrap();
        let p = Principal::anonymous();
        log.begin("DoGet", Client::default(), &p).unwrap().ok().await.unwrap();
        // The writer is gone: every later call is refused before it starts, and a call already
        // running cannot finish.
        let running = log.begin("DoGet", Client::default(), &p).unwrap();
        log.close().await;
        assert!(matches!(running.ok().await, Err(Error::Unavailable)));
        assert!(matches!(log.begin("DoGet", Client::default(), &p), Err(Error::Unavailable)));
        assert_eq!(segments::verify_all(dir.path()).unwrap().records, 1);
    }

    #[tokio::test]
    async fn a_finished_call_is_durable_and_checkpointed_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), options()).await.unwrap();
        let p = Principal::anonymous();
        let mut t = log.begin("DoGet", Client::default(), &p).unwrap();
        t.started().await.unwrap();
        t.add(10, 100);
        t.ok().await.unwrap();
        // No flush: the records are on disk and the checkpoint names the last one.
        let text = text(dir.path());
        assert_eq!(segments::verify_all(dir.path()).unwrap().records, 2);
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let cp = segments::Checkpoint::read(dir.path()).unwrap().unwrap();
        assert_eq!((cp.records, json!(cp.hash)), (2, last["hash"].clone()));
        let kinds: Vec<Value> =
            text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].clone()).collect();
        assert_eq!(kinds, [json!("read_start"), json!("read")]);
        drop(log);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_after_a_bounded_wait_and_heals() {
        let dir = tempfile::tempdir().unwrap();
        let options = AuditOptions { queue: 1, wait: Duration::from_millis(200), ..options() };
        let log = AuditLog::open(dir.path(), options).await.unwrap();
        let p = Principal::anonymous();
        // Fill the queue faster than the writer drains it, from many tasks at once: some calls
        // may be refused, none waits past the bound, and the log stays usable.
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let t = log.begin("DoGet", Client::default(), &p).unwrap();
                tokio::spawn(async move {
                    let at = Instant::now();
                    let r = t.ok().await;
                    (r.is_ok(), at.elapsed())
                })
            })
            .collect();
        for c in calls {
            let (_, took) = c.await.unwrap();
            assert!(took < Duration::from_secs(2), "a call waited {took:?}");
        }
        // Refusals said nothing about the writer: the log is healthy and records again (a few
        // tries: one sync may take longer than the short wait on a busy machine).
        assert!(log.check().is_ok());
        let mut recorded = false;
        for _ in 0..10 {
            if log.begin("DoGet", Client::default(), &p).unwrap().ok().await.is_ok() {
                recorded = true;
                break;
            }
        }
        assert!(recorded);
    }

    #[tokio::test]
    async fn failed_logins_cannot_close_the_log_for_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions { queue: 8, ..options() }).await.unwrap();
        // A flood of failed logins from many addresses, faster than the writer can run (this
        // loop never yields to it).
        for i in 0..1000 {
            let client = Client { address: Some(format!("10.0.{}.{}:5000", i / 250, i % 250)), ..Default::default() };
            log.auth_failure("Handshake", client, "unknown user or wrong password");
        }
        assert!(log.check().is_ok(), "the flood left the log healthy");
        log.flush().await;
        let written = text(dir.path()).lines().filter(|l| l.contains("\"authentication_failure\"")).count();
        assert_eq!(written as u64 + log.auth_failures_suppressed(), 1000, "each failure written or counted");
        assert!(log.auth_failures_suppressed() > 0, "the queue was never given over to failed logins");
        let p = Principal::anonymous();
        log.begin("DoGet", Client::default(), &p).unwrap().ok().await.unwrap();
        let t = text(dir.path());
        assert!(t.lines().last().unwrap().contains("\"DoGet\""), "the read was recorded");
        // One address alone is limited too, and what is suppressed is summed, per source.
        for _ in 0..100 {
            let client = Client { address: Some("192.0.2.7:1".into()), ..Default::default() };
            log.auth_failure("Handshake", client, "unknown user or wrong password");
            log.flush().await;
        }
        let suppressed = log.auth_failures_suppressed();
        log.close().await;
        let t = text(dir.path());
        let from_one =
            t.lines().filter(|l| l.contains("\"authentication_failure\"") && l.contains("192.0.2.7")).count();
        assert_eq!(from_one, AUTH_FAILURES_PER_SOURCE as usize);
        let summary: Value = serde_json::from_str(t.lines().last().unwrap()).unwrap();
        assert_eq!(summary["kind"], "authentication_failures_suppressed");
        assert_eq!(summary["suppressed"]["total"], suppressed);
        assert_eq!(summary["suppressed"]["sources"][0], "192.0.2.7: 80");
    }

    #[tokio::test]
    async fn fail_open_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions { fail_open: true, ..options() }).await.unwrap();
        log.close().await;
        let p = Principal::anonymous();
        log.begin("DoGet", Client::default(), &p).unwrap().ok().await.unwrap();
        assert!(log.begin("DoGet", Client::default(), &p).is_ok());
    }

    #[tokio::test]
    async fn segments_rotate_and_reopen_where_they_ended() {
        let dir = tempfile::tempdir().unwrap();
        let small = AuditOptions { segment_bytes: 2_000, ..options() };
        let p = Principal::anonymous();
        for _ in 0..2 {
            let log = AuditLog::open(dir.path(), small.clone()).await.unwrap();
            for _ in 0..20 {
                log.begin("DoGet", Client::default(), &p).unwrap().ok().await.unwrap();
            }
            log.close().await;
        }
        let segs = segments::list(dir.path()).unwrap();
        assert!(segs.len() >= 10, "{} segments", segs.len());
        let report = segments::verify_all(dir.path()).unwrap();
        assert_eq!(report.records, 40);
        // Times never go back across the whole log, so segment names bound their records.
        let times: Vec<String> = text(dir.path())
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["time"].as_str().unwrap().to_string())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[tokio::test]
    async fn refuses_to_continue_a_broken_or_shortened_log() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("00000000000000000000-20261122T101500.000Z.jsonl");
        std::fs::write(&seg, "{\"seq\":5}\n").unwrap();
        assert!(matches!(AuditLog::open(dir.path(), options()).await, Err(Error::Broken { .. })));
        // A whole log whose last records were removed: the checkpoint gives it away.
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), options()).await.unwrap();
        let p = Principal::anonymous();
        for _ in 0..3 {
            log.begin("DoGet", Client::default(), &p).unwrap().ok().await.unwrap();
        }
        log.close().await;
        let [seg] = &segments::list(dir.path()).unwrap()[..] else { panic!("one segment") };
        let t = std::fs::read_to_string(&seg.path).unwrap();
        let kept: String = t.split_inclusive('\n').take(2).collect();
        std::fs::write(&seg.path, kept).unwrap();
        let e = AuditLog::open(dir.path(), options()).await.unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
        assert!(segments::verify_all(dir.path()).is_err());
    }

    #[tokio::test]
    async fn a_record_cut_short_by_a_kill_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), options()).await.unwrap();
        let p = Principal::anonymous();
        log.begin("DoGet", Client::default(), &p).unwrap().ok().await.unwrap();
        log.close().await;
        let [seg] = &segments::list(dir.path()).unwrap()[..] else { panic!("one segment") };
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg.path).unwrap();
        std::io::Write::write_all(&mut f, b"{\"seq\":1,\"kind\":\"re").unwrap();
        let log = AuditLog::open(dir.path(), options()).await.unwrap();
        log.begin("DoGet", Client::default(), &p).unwrap().ok().await.unwrap();
        log.close().await;
        assert_eq!(segments::verify_all(dir.path()).unwrap().records, 2);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".partial-"));
        assert_eq!(aside.count(), 1);
    }
}
