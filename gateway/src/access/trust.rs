//! Quality and freshness as the core runs and reports them: scheduled and requested checks,
//! the `quality`/`freshness` parts of `describe`, `FlightInfo` and health, and a read's
//! `max_staleness`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::describe::{PortTrust, TrustOf};
use super::snapshot::MeshSnapshot;
use super::{AccessCore, AuthorizedPlan, Error, Result};
use crate::auth::Principal;
use crate::catalog::{Port, Product};
use crate::quality::{self, Outcome, REPORT_TTL, Trigger, VERSION_TTL};

/// How long one rule may run when the statement limit does not say.
const RULE_TIME: Duration = Duration::from_secs(300);

impl AccessCore {
    /// The quality outcomes and freshness observations.
    pub fn quality(&self) -> &Arc<quality::Quality> {
        &self.quality
    }

    pub(crate) fn rule_time(&self) -> Duration {
        self.options.statements.timeout.unwrap_or(RULE_TIME)
    }

    /// Runs the rules that are due (see [`quality::Quality::due`]) on every product port of
    /// the catalog in force; returns how many rules ran. One port's failure does not stop the
    /// others: it is recorded as that rule's outcome.
    pub async fn check_due_quality(self: &Arc<Self>, every: Duration) -> Result<usize> {
        let core = Arc::clone(self);
        self.exec
            .run(async move {
                let snapshot = core.snapshot();
                let state = core.catalog.state().clone();
                let mut ran = 0;
                for product in snapshot.catalog.products() {
                    for port in &product.ports {
                        // Observed for every port, so that reporting freshness never lists
                        // files on the request path.
                        let version = core.quality.version(&state, (product, port), VERSION_TTL).await.map(|v| v.id);
                        if let Some(a) = &port.acceleration {
                            a.observe(version.as_deref(), &state).await;
                        }
                        let due = core.quality.due(product, port, version.as_deref(), every);
                        if due.is_empty() {
                            continue;
                        }
                        ran += due.len();
                        quality::check(
                            &core.quality,
                            &state,
                            (product, port),
                            &due,
                            Trigger::Schedule,
                            core.rule_time(),
                        )
                        .await;
                    }
                }
                Ok(ran)
            })
            .await
    }

    /// Runs every rule of `target`'s ports (or of every product when `None`) now, for an
    /// operator (`admin`); returns the outcomes.
    pub async fn check_quality_as(
        self: &Arc<Self>,
        p: &Principal,
        target: Option<(String, String)>,
    ) -> Result<Vec<Outcome>> {
        let snapshot = self.snapshot();
        if !snapshot.may_admin(p) {
            return Err(Error::Denied { product: "the gateway (check-quality)".into(), policy_ids: vec![] });
        }
        let products: Vec<Arc<Product>> = match &target {
            None => snapshot.catalog.products().cloned().collect(),
            Some((d, n)) => {
                let visible = |_: &str, _: &str, prod: Option<&Product>| snapshot.visible(p, prod);
                vec![snapshot.catalog.resolve_visible(d, n, None, &visible)?.0]
            }
        };
        let core = Arc::clone(self);
        self.exec
            .run(async move {
                let state = core.catalog.state().clone();
                let mut out = Vec::new();
                for product in &products {
                    for port in &product.ports {
                        let rules: Vec<_> = port.contract.rules.iter().filter(|r| r.runnable()).collect();
                        let done = quality::check(
                            &core.quality,
                            &state,
                            (product, port),
                            &rules,
                            Trigger::Manual,
                            core.rule_time(),
                        )
                        .await;
                        out.extend(done);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// `{"quality": ..., "freshness": ...}` of one port: the declared rules with the last
    /// check's summary, and the measured freshness against the SLA.
    pub(crate) async fn trust_json(&self, product: &Product, port: &Port) -> Value {
        let freshness = self.quality.freshness(self.catalog.state(), (product, port), REPORT_TTL).await;
        let last = self.quality.last_check(product, port);
        let rules: Vec<Value> = port
            .contract
            .rules
            .iter()
            .map(|r| {
                let mut j = r.to_json();
                if let Some(o) = last.as_ref().and_then(|l| l.outcomes.iter().find(|o| o.rule == r.name)) {
                    j["last"] = json!({"time": o.time, "value": o.value, "passed": o.passed, "error": o.error});
                }
                j
            })
            .collect();
        let mut out = json!({
            "quality": {
                "rules": rules,
                "last_check": last.map(|l| l.summary()),
            },
            "freshness": freshness.to_json((self.now)()),
        });
        if let Some(a) = &port.acceleration {
            out["acceleration"] = a.status();
        }
        out
    }

    /// What `FlightInfo.app_metadata` says of `plan`: the products it reads and, for a
    /// product read, the port's last quality check and freshness.
    pub async fn description(&self, plan: &AuthorizedPlan) -> Value {
        let mut out = plan.description();
        if let [r] = plan.reads() {
            if let (Value::Object(o), Value::Object(t)) = (&mut out, self.trust_json(&r.product, &r.port).await) {
                o.extend(t);
            }
        }
        out
    }

    /// Refuses `plan` when a product it reads changed longer than `max` ago (or its age is not
    /// measured), naming the product, its age and its SLA.
    pub(crate) async fn check_staleness(&self, plan: &AuthorizedPlan, max: Duration) -> Result<()> {
        let now = (self.now)();
        for r in plan.reads() {
            let f = self.quality.freshness(self.catalog.state(), (&r.product, &r.port), VERSION_TTL).await;
            let sla = f
                .limit
                .as_ref()
                .map(|l| format!("its contract promises {} {}", l.property, l.declared))
                .unwrap_or_else(|| "its contract promises no freshness".into());
            let product = r.product.address();
            match f.age(now) {
                Some(age) if age <= max => {}
                Some(age) => {
                    return Err(Error::Stale(format!(
                        "`{product}` last changed {} ago, longer than the max_staleness of {} this read allows ({sla})",
                        humantime::format_duration(Duration::from_secs(age.as_secs())),
                        humantime::format_duration(max),
                    )));
                }
                None => {
                    return Err(Error::Stale(format!(
                        "the age of `{product}` is not measured (its storage does not report changes), so \
                         max_staleness cannot be honoured; leave it out to read anyway ({sla})"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The quality status and freshness of every port of the products `visible` lets the
    /// caller see, for health.
    pub(crate) async fn port_trust(&self, snapshot: &MeshSnapshot, visible: crate::catalog::Visibility<'_>) -> TrustOf {
        let now = (self.now)();
        let mut out = TrustOf::new();
        for product in snapshot.catalog.products().filter(|p| visible(&p.domain, &p.name, Some(p))) {
            for port in &product.ports {
                let f = self.quality.freshness(self.catalog.state(), (product, port), REPORT_TTL).await;
                let quality = self.quality.last_check(product, port).map(|l| l.summary()["status"].clone());
                let accel_problem = port.acceleration.as_ref().and_then(|a| a.problem());
                let trust = PortTrust {
                    degraded: f.breached(now)
                        || quality.as_ref().is_some_and(|q| q == "fail")
                        || accel_problem.is_some(),
                    acceleration: port.acceleration.as_ref().map(|a| a.status()),
                    quality: quality.unwrap_or(Value::Null),
                    freshness: f.to_json(now)["status"].clone(),
                };
                out.insert((product.domain.clone(), product.name.clone(), port.name.clone()), trust);
            }
        }
        out
    }
}
