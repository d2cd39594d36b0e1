//! Trustworthy products: the contract's quality rules and SLA, enforced and measured.
//!
//! ```text
//!  contract (ODCS v3.1) ── load ──► rules (quality on schema/properties) · age limit (SLA)
//!  scheduler (one task) ── per port: data version (file listing) changed? rule due? ──►
//!     run (read-only SQL over the product's table) ──► Outcome records ──► Quality
//!  Quality ──► describe · FlightInfo app metadata · health · `_governance/quality` ·
//!              "max_staleness" on a read
//! ```
//!
//! - [`rules`]: the rules a contract declares, parsed and checked at load.
//! - [`run`]: one rule measured as one SQL query.
//! - [`sla`]: the age limit and measured freshness.
//! - [`product`]: `_governance/quality`, every recorded outcome as a governed product.
//!
//! Results live in memory (the newest [`KEEP`] outcomes) and, with `--quality-log`, are
//! appended to a JSON-lines file that a restart reads back.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use datafusion::execution::session_state::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::catalog::{Port, Product};

pub mod product;
pub mod rules;
pub mod run;
pub mod sla;

pub use rules::Rule;
pub use sla::{AgeLimit, Freshness};

/// How many outcomes are kept in memory (and served by `_governance/quality`).
pub const KEEP: usize = 100_000;

/// How old an observed data version may be for a read that asks for `max_staleness` (the
/// listing is taken again past it).
pub const VERSION_TTL: Duration = Duration::from_secs(5);

/// How old an observed data version may be for what is only reported (`FlightInfo`,
/// `describe`, health). The scheduler observes every port far more often, so a call on the
/// request path practically never lists files itself.
pub const REPORT_TTL: Duration = Duration::from_secs(60);

/// What started a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The schedule (or a data change seen by it).
    Schedule,
    /// A publish, before its version became visible.
    Publish,
    /// An operator's request.
    Manual,
}

/// One rule's outcome at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// When it was measured (RFC 3339).
    pub time: String,
    /// Product's domain.
    pub domain: String,
    /// Product name.
    pub product: String,
    /// Port name.
    pub port: String,
    /// Contract version the rule comes from.
    pub contract_version: String,
    /// Rule name.
    pub rule: String,
    /// Metric (`nullValues`, ..., `sql`).
    pub metric: String,
    /// Column, for property rules.
    pub column: Option<String>,
    /// ODCS dimension.
    pub dimension: Option<String>,
    /// ODCS severity.
    pub severity: Option<String>,
    /// The expectation (`mustBe 0`).
    pub expect: Option<String>,
    /// The measured value.
    pub value: Option<f64>,
    /// Whether the expectation held (false when the rule could not be measured).
    pub passed: bool,
    /// Why the rule could not be measured.
    pub error: Option<String>,
    /// The data version it was measured on.
    pub data_version: Option<String>,
    /// What started it.
    pub trigger: Trigger,
}

impl Outcome {
    /// The outcome of `rule` of `port` measured as `measured`.
    pub fn new(
        (product, port): (&Product, &Port),
        rule: &Rule,
        measured: Result<f64, run::Error>,
        data_version: Option<String>,
        trigger: Trigger,
    ) -> Self {
        let expect = rule.expect;
        let (value, error) = match measured {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Self {
            time: crate::quality::rfc3339(SystemTime::now()),
            domain: product.domain.clone(),
            product: product.name.clone(),
            port: port.name.clone(),
            contract_version: port.contract.version.clone(),
            rule: rule.name.clone(),
            metric: rule.metric().into(),
            column: rule.column().map(str::to_string),
            dimension: rule.dimension.clone(),
            severity: rule.severity.clone(),
            expect: expect.map(|e| e.to_string()),
            passed: matches!((value, expect), (Some(v), Some(e)) if e.holds(v)),
            value,
            error,
            data_version,
            trigger,
        }
    }
}

/// Identity of a port's data at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataVersion {
    /// Digest of what the data is made of (file paths, sizes, modification times).
    pub id: String,
    /// The newest modification, if the storage tells.
    pub changed: Option<SystemTime>,
}

/// The version of the files `plan` scans, when it is one file scan; `None` for other storage.
pub(crate) fn files_version(plan: &Arc<dyn ExecutionPlan>) -> Option<DataVersion> {
    let files = crate::access::listed_files(plan)?;
    let mut h = Sha256::new();
    let mut changed = None;
    for f in &files {
        let m = &f.object_meta;
        h.update(m.location.as_ref().as_bytes());
        h.update(m.size.to_le_bytes());
        h.update(m.last_modified.timestamp_millis().to_le_bytes());
        let t = SystemTime::from(m.last_modified);
        changed = Some(changed.map_or(t, |c: SystemTime| c.max(t)));
    }
    Some(DataVersion { id: hex::encode(&h.finalize()[..12]), changed })
}

/// The version of `port`'s data now: its file listing, when it is stored as files. Other
/// storage reports no version (and planning a scan of it could reach a remote server).
pub async fn data_version(state: &SessionState, port: &Port) -> Option<DataVersion> {
    if !matches!(port.binding, meshgate_adapters::Binding::Files(_)) {
        return None;
    }
    // The storage's files, not an in-memory copy of them.
    let storage = port.acceleration.as_ref().map_or(&port.table, |a| a.storage());
    let plan = storage.scan(state, Some(&vec![]), &[], None).await.ok()?;
    files_version(&plan)
}

type PortKey = (String, String, String);

/// The last check of one port.
#[derive(Debug, Clone, PartialEq)]
pub struct LastCheck {
    /// When it ran.
    pub at: SystemTime,
    /// On which data version.
    pub data_version: Option<String>,
    /// The newest outcome of each rule.
    pub outcomes: Vec<Outcome>,
}

impl LastCheck {
    /// As JSON for `describe` and `FlightInfo`: counts and the failing rules.
    pub fn summary(&self) -> Value {
        let failed: Vec<&Outcome> = self.outcomes.iter().filter(|o| !o.passed).collect();
        json!({
            "checked_at": crate::quality::rfc3339(self.at),
            "data_version": self.data_version,
            "rules": self.outcomes.len(),
            "passed": self.outcomes.len() - failed.len(),
            "failed": failed.len(),
            "status": if failed.is_empty() { "pass" } else { "fail" },
            "failing": failed.iter().map(|o| json!({"rule": o.rule, "column": o.column, "value": o.value, "expect": o.expect, "error": o.error})).collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Default)]
struct PortState {
    last: Option<LastCheck>,
    /// Per rule, when it last ran.
    ran: HashMap<String, SystemTime>,
    /// The data version seen last, and when it was taken.
    seen: Option<(SystemTime, Option<DataVersion>)>,
}

/// Quality outcomes and freshness observations of every port, shared by all fronts.
#[derive(Debug, Default)]
pub struct Quality {
    log: Option<PathBuf>,
    recent: Mutex<VecDeque<Outcome>>,
    ports: Mutex<HashMap<PortKey, PortState>>,
}

fn key(product: &Product, port: &Port) -> PortKey {
    (product.domain.clone(), product.name.clone(), port.name.clone())
}

impl Quality {
    /// A store that keeps outcomes in memory and, with `log`, appends them to that JSON-lines
    /// file (read back now, so history survives a restart).
    pub fn open(log: Option<PathBuf>) -> std::io::Result<Self> {
        let q = Self { log, ..Self::default() };
        if let Some(path) = &q.log {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let mut recent = q.recent.lock().unwrap_or_else(|e| e.into_inner());
                    for line in text.lines() {
                        // A line cut short by a crash is skipped, not fatal.
                        if let Ok(o) = serde_json::from_str::<Outcome>(line) {
                            recent.push_back(o);
                        }
                    }
                    while recent.len() > KEEP {
                        recent.pop_front();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(q)
    }

    /// Records the outcomes of one check of `port`.
    pub fn record(&self, product: &Product, port: &Port, data_version: Option<String>, outcomes: Vec<Outcome>) {
        if outcomes.is_empty() {
            return;
        }
        if let Some(path) = &self.log {
            let mut text = String::new();
            for o in &outcomes {
                text.push_str(&serde_json::to_string(o).unwrap_or_default());
                text.push('\n');
            }
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = written {
                tracing::warn!(error = %e, "quality outcomes could not be appended to the quality log");
            }
        }
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.extend(outcomes.iter().cloned());
            while recent.len() > KEEP {
                recent.pop_front();
            }
        }
        let now = SystemTime::now();
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let state = ports.entry(key(product, port)).or_default();
        for o in &outcomes {
            state.ran.insert(o.rule.clone(), now);
        }
        let mut merged = state.last.take().map(|l| l.outcomes).unwrap_or_default();
        merged.retain(|old| !outcomes.iter().any(|o| o.rule == old.rule));
        merged.extend(outcomes.iter().cloned());
        // Rules no longer in the contract are not reported as current.
        let names: Vec<&str> = port.contract.rules.iter().map(|r| r.name.as_str()).collect();
        merged.retain(|o| names.contains(&o.rule.as_str()));
        state.last = Some(LastCheck { at: now, data_version, outcomes: merged });
        drop(ports);
        // Logged once recorded: a reader that sees the line sees the outcome in `describe`.
        for o in &outcomes {
            let status = if o.passed { "pass" } else { "fail" };
            tracing::info!(product = %product.address(), port = %port.name, rule = %o.rule, value = ?o.value, status, "quality rule checked");
        }
    }

    /// The last check of `port`, if any.
    pub fn last_check(&self, product: &Product, port: &Port) -> Option<LastCheck> {
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let last = ports.get(&key(product, port))?.last.clone()?;
        // After a contract change, only outcomes of the contract in force count.
        Some(last).filter(|l| l.outcomes.iter().all(|o| o.contract_version == port.contract.version))
    }

    /// Every outcome kept, oldest first.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// `port`'s data version, as observed at most `max_age` ago (measured now otherwise).
    pub async fn version(
        &self,
        state: &SessionState,
        (product, port): (&Product, &Port),
        max_age: Duration,
    ) -> Option<DataVersion> {
        let k = key(product, port);
        {
            let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, v)) = ports.get(&k).and_then(|s| s.seen.clone())
                && at.elapsed().unwrap_or(Duration::MAX) < max_age
            {
                return v;
            }
        }
        let v = data_version(state, port).await;
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        ports.entry(k).or_default().seen = Some((SystemTime::now(), v.clone()));
        v
    }

    /// How fresh `port`'s data is against its contract, from an observation at most `max_age`
    /// old ([`VERSION_TTL`] to decide a read, [`REPORT_TTL`] to report).
    pub async fn freshness(
        &self,
        state: &SessionState,
        (product, port): (&Product, &Port),
        max_age: Duration,
    ) -> Freshness {
        let changed = self.version(state, (product, port), max_age).await.and_then(|v| v.changed);
        Freshness { changed, limit: port.contract.age_limit.clone() }
    }

    /// The rules of `port` due now: never run, run on another data version, or past their
    /// schedule (`every` for rules without a cron schedule).
    pub fn due<'a>(&self, product: &Product, port: &'a Port, version: Option<&str>, every: Duration) -> Vec<&'a Rule> {
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let state = ports.get(&key(product, port));
        let now = SystemTime::now();
        let changed = match state.and_then(|s| s.last.as_ref()) {
            Some(l) => version.is_some() && l.data_version.as_deref() != version,
            None => true,
        };
        port.contract
            .rules
            .iter()
            .filter(|r| r.runnable())
            .filter(|r| {
                let Some(ran) = state.and_then(|s| s.ran.get(&r.name)) else { return true };
                if changed {
                    return true;
                }
                match &r.schedule {
                    None => now.duration_since(*ran).unwrap_or_default() >= every,
                    Some(cron) => next_after(cron, *ran).is_some_and(|next| next <= now),
                }
            })
            .collect()
    }
}

/// `t` as RFC 3339 in UTC, to the millisecond (as audit records write time).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The first time `cron` fires after `t`.
fn next_after(cron: &str, t: SystemTime) -> Option<SystemTime> {
    let c: croner::Cron = cron.parse().ok()?;
    let at: chrono::DateTime<chrono::Utc> = t.into();
    c.find_next_occurrence(&at, false).ok().map(SystemTime::from)
}

/// Checks `rules` of `port` now and records the outcomes; returns them.
pub async fn check(
    quality: &Quality,
    state: &SessionState,
    (product, port): (&Product, &Port),
    rules: &[&Rule],
    trigger: Trigger,
    limit: Duration,
) -> Vec<Outcome> {
    let version = quality.version(state, (product, port), VERSION_TTL).await.map(|v| v.id);
    let mut outcomes = Vec::with_capacity(rules.len());
    for rule in rules {
        let measured = run::measure(state, std::sync::Arc::clone(&port.table), rule, limit).await;
        outcomes.push(Outcome::new((product, port), rule, measured, version.clone(), trigger));
    }
    quality.record(product, port, version, outcomes.clone());
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_schedules_fire_after_the_last_run() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(20 * 3600 - 60); // 19:59 UTC, day 1
        let next = next_after("0 20 * * *", t).unwrap();
        assert_eq!(next.duration_since(t).unwrap(), Duration::from_secs(60));
        assert_eq!(next_after("not cron", t), None);
    }

    #[test]
    fn outcomes_survive_a_restart_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q/quality.jsonl");
        let q = Quality::open(Some(path.clone())).unwrap();
        assert!(q.outcomes().is_empty());
        let o = Outcome {
            time: "2026-01-01T00:00:00.000Z".into(),
            domain: "d".into(),
            product: "p".into(),
            port: "v1".into(),
            contract_version: "1".into(),
            rule: "r".into(),
            metric: "rowCount".into(),
            column: None,
            dimension: None,
            severity: None,
            expect: Some("mustBe 1".into()),
            value: Some(1.0),
            passed: true,
            error: None,
            data_version: None,
            trigger: Trigger::Schedule,
        };
        let line = serde_json::to_string(&o).unwrap();
        std::fs::write(&path, format!("{line}\n{{\"cut\n")).unwrap();
        let q = Quality::open(Some(path)).unwrap();
        assert_eq!(q.outcomes(), vec![o]);
    }
}
