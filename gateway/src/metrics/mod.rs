//! Prometheus metrics: what the gateway counts, and the scrape that renders it.
//!
//! ```text
//!  gRPC call ──► rpc::RpcLayer ── requests by RPC and code, latency (to the stream's end)
//!  read      ──► Metrics::stream(products, consumer) ── rows and bytes per product and consumer,
//!                                                       active streams
//!  scrape    ──► Live (read at scrape time): audit queue, caches, reloads, product health,
//!                memory pool ──► OpenMetrics text
//! ```
//!
//! Label values are bounded: RPC names come from a fixed list, products from the catalog, and
//! consumers beyond [`Metrics::new`]'s cap are counted together under [`OTHER_CONSUMERS`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub mod rpc;

/// The consumer label of consumers past the cap.
pub const OTHER_CONSUMERS: &str = "_other";

/// Consumers with a label of their own by default.
pub const DEFAULT_MAX_CONSUMERS: usize = 100;

/// Hits and misses of one cache, counted where the cache is asked.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheStats {
    /// Counts one answer from the cache.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answer computed because the cache did not have it.
    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Hits and misses so far.
    pub fn get(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcName {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Served {
    product: String,
    consumer: String,
}

/// Values read when Prometheus scrapes, filled by the scrape handler just before encoding.
#[derive(Debug, Default, Clone)]
pub struct Live {
    /// Audit records waiting to be written.
    pub audit_queue: i64,
    /// Audit records not written: failed sign-ins past the per-source limit (counted instead).
    pub audit_dropped: u64,
    /// `(cache, hits, misses)`.
    pub caches: Vec<(&'static str, u64, u64)>,
    /// Reloads that put a catalog in force, and reloads that failed.
    pub reloads: (u64, u64),
    /// The catalog generation in force.
    pub generation: u64,
    /// `(product, port, adapter, healthy)` for every port in the catalog.
    pub ports: Vec<(String, String, String, bool)>,
    /// Products refused at load (not served).
    pub refused: u64,
    /// Bytes the query engine's memory pool has reserved, and its limit (0: unlimited).
    pub memory: (u64, u64),
    /// Lineage events `(sent, dropped, failed)`, when lineage is reported.
    pub lineage: Option<(u64, u64, u64)>,
    /// `(product, port, rows, bytes)` of every port served from an in-memory copy.
    pub accelerated: Vec<(String, String, u64, u64)>,
}

#[derive(Debug, Default)]
struct LiveCollector(Arc<Mutex<Live>>);

fn put<M: EncodeMetric>(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, m: &M) -> std::fmt::Result {
    m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let live = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        put(
            &mut encoder,
            "meshgate_audit_queue_depth",
            "Audit records waiting to be written.",
            &ConstGauge::new(live.audit_queue),
        )?;
        put(
            &mut encoder,
            "meshgate_audit_records_dropped",
            "Failed sign-ins not recorded one by one (past the per-source limit; counted in summary records).",
            &ConstCounter::new(live.audit_dropped),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "meshgate_cache_requests",
                "Cache lookups by cache and result (hit or miss).",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (cache, hits, misses) in &live.caches {
                for (result, n) in [("hit", hits), ("miss", misses)] {
                    let labels = [("cache", *cache), ("result", result)];
                    ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "meshgate_catalog_reloads",
                "Catalog reloads by outcome (ok: a catalog was put in force; failed: the last good one stayed).",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (outcome, n) in [("ok", live.reloads.0), ("failed", live.reloads.1)] {
                ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        put(
            &mut encoder,
            "meshgate_catalog_generation",
            "Generation of the catalog in force.",
            &ConstGauge::new(live.generation as i64),
        )?;
        put(
            &mut encoder,
            "meshgate_products_refused",
            "Products refused at load (not served).",
            &ConstGauge::new(live.refused as i64),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "meshgate_port_up",
                "Whether a product port's storage answers its health probe (1) or not (0).",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (product, port, adapter, up) in &live.ports {
                let labels = [("product", product.as_str()), ("port", port.as_str()), ("adapter", adapter.as_str())];
                ConstGauge::new(i64::from(*up)).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some((sent, dropped, failed)) = live.lineage {
            let mut family = encoder.encode_descriptor(
                "meshgate_lineage_events",
                "OpenLineage events by outcome (sent; dropped: the queue was full; failed: a transport refused them).",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (outcome, n) in [("sent", sent), ("dropped", dropped), ("failed", failed)] {
                ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        if !live.accelerated.is_empty() {
            for (name, help, pick) in [
                (
                    "meshgate_acceleration_bytes",
                    "Bytes of a port's in-memory copy (0 while none is kept).",
                    (|r: &(String, String, u64, u64)| r.3) as fn(&(String, String, u64, u64)) -> u64,
                ),
                ("meshgate_acceleration_rows", "Rows of a port's in-memory copy.", |r| r.2),
            ] {
                let mut family =
                    encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
                for r in &live.accelerated {
                    let labels = [("product", r.0.as_str()), ("port", r.1.as_str())];
                    ConstGauge::new(pick(r) as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        put(
            &mut encoder,
            "meshgate_memory_pool_reserved_bytes",
            "Bytes the query engine's memory pool has reserved.",
            &ConstGauge::new(live.memory.0 as i64),
        )?;
        put(
            &mut encoder,
            "meshgate_memory_pool_limit_bytes",
            "The query engine's memory limit (--memory-limit-mb).",
            &ConstGauge::new(live.memory.1 as i64),
        )
    }
}

/// The gateway's metrics. One per gateway, shared behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcLabels, Counter>,
    latency: Family<RpcName, Histogram>,
    rows: Family<Served, Counter>,
    bytes: Family<Served, Counter>,
    streams: Gauge,
    consumers: Mutex<HashSet<String>>,
    max_consumers: usize,
    live: Arc<Mutex<Live>>,
}

impl Metrics {
    /// Metrics labelling at most `max_consumers` consumers by name.
    pub fn new(max_consumers: usize) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RpcLabels, Counter>::default();
        registry.register("meshgate_rpc_requests", "Calls by RPC and gRPC status code", requests.clone());
        let latency = Family::<RpcName, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 18))) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "meshgate_rpc_duration",
            "Time from a call's arrival to its last message (streams included)",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let rows = Family::<Served, Counter>::default();
        registry.register("meshgate_rows_served", "Rows read by consumers, per product and consumer", rows.clone());
        let bytes = Family::<Served, Counter>::default();
        registry.register_with_unit(
            "meshgate_served",
            "Arrow bytes read by consumers, per product and consumer",
            prometheus_client::registry::Unit::Bytes,
            bytes.clone(),
        );
        let streams = Gauge::default();
        registry.register("meshgate_streams_active", "Reads streaming now", streams.clone());
        let live = Arc::new(Mutex::new(Live::default()));
        registry.register_collector(Box::new(LiveCollector(Arc::clone(&live))));
        Self {
            registry,
            requests,
            latency,
            rows,
            bytes,
            streams,
            consumers: Mutex::new(HashSet::new()),
            max_consumers,
            live,
        }
    }

    /// Counts one finished call.
    pub fn call(&self, rpc: &'static str, code: tonic::Code, took: std::time::Duration) {
        self.requests.get_or_create(&RpcLabels { rpc, code: code_name(code) }).inc();
        self.latency.get_or_create(&RpcName { rpc }).observe(took.as_secs_f64());
    }

    /// The consumer label for `subject`: its name while fewer than the cap have one.
    fn consumer(&self, subject: &str) -> String {
        let mut seen = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(subject) {
            return subject.to_string();
        }
        if seen.len() < self.max_consumers {
            seen.insert(subject.to_string());
            return subject.to_string();
        }
        OTHER_CONSUMERS.to_string()
    }

    /// A read starting: counted as active until the returned value is dropped; what it
    /// delivers is added to each product it reads.
    pub fn stream(&self, products: &[String], subject: &str) -> StreamMetrics {
        let consumer = self.consumer(subject);
        let counters = products
            .iter()
            .map(|p| {
                let labels = Served { product: p.clone(), consumer: consumer.clone() };
                (self.rows.get_or_create(&labels).clone(), self.bytes.get_or_create(&labels).clone())
            })
            .collect();
        self.streams.inc();
        StreamMetrics { counters, streams: self.streams.clone() }
    }

    /// Renders every metric as OpenMetrics text, with `live` as the scrape-time values.
    pub fn render(&self, live: Live) -> String {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One read's counters; the read stops counting as active when this is dropped.
#[derive(Debug)]
pub struct StreamMetrics {
    counters: Vec<(Counter, Counter)>,
    streams: Gauge,
}

impl StreamMetrics {
    /// Adds one batch.
    pub fn add(&self, rows: u64, bytes: u64) {
        for (r, b) in &self.counters {
            r.inc_by(rows);
            b.inc_by(bytes);
        }
    }
}

impl Drop for StreamMetrics {
    fn drop(&mut self) {
        self.streams.dec();
    }
}

/// A gRPC code as its canonical name (`OK`, `NOT_FOUND`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An atomic counter of reloads, kept by the core.
#[derive(Debug, Default)]
pub struct ReloadStats {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Products refused by the last reload.
    refused: AtomicI64,
}

impl ReloadStats {
    /// Counts a reload that put a catalog in force with `refused` products refused.
    pub fn ok(&self, refused: usize) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.refused.store(refused as i64, Ordering::Relaxed);
    }

    /// Counts a reload that failed (the catalog in force stayed).
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// `(ok, failed, refused by the last reload)`.
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed).max(0) as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_past_the_cap_share_one_label() {
        let m = Metrics::new(2);
        for who in ["alice", "bob", "carol", "dave", "alice"] {
            m.stream(&["sales/orders".into()], who).add(1, 10);
        }
        let text = m.render(Live::default());
        assert!(text.contains(r#"meshgate_rows_served_total{product="sales/orders",consumer="alice"} 2"#), "{text}");
        assert!(text.contains(r#"consumer="bob"} 1"#), "{text}");
        assert!(text.contains(r#"meshgate_rows_served_total{product="sales/orders",consumer="_other"} 2"#), "{text}");
        assert!(!text.contains("carol") && !text.contains("dave"), "{text}");
    }

    #[test]
    fn active_streams_end_when_dropped() {
        let m = Metrics::new(10);
        let a = m.stream(&["a/b".into()], "x");
        let _b = m.stream(&["a/b".into()], "x");
        assert!(m.render(Live::default()).contains("meshgate_streams_active 2"));
        drop(a);
        assert!(m.render(Live::default()).contains("meshgate_streams_active 1"));
    }

    #[test]
    fn scrape_time_values_are_rendered_with_their_labels() {
        let m = Metrics::new(10);
        m.call("DoGet", tonic::Code::NotFound, std::time::Duration::from_millis(3));
        let text = m.render(Live {
            caches: vec![("grants", 5, 1)],
            ports: vec![("sales/orders".into(), "v1".into(), "files".into(), false)],
            reloads: (3, 1),
            lineage: Some((7, 2, 1)),
            accelerated: vec![("sales/orders".into(), "v1".into(), 10, 4096)],
            ..Live::default()
        });
        for line in [
            r#"meshgate_acceleration_bytes{product="sales/orders",port="v1"} 4096"#,
            r#"meshgate_acceleration_rows{product="sales/orders",port="v1"} 10"#,
            r#"meshgate_lineage_events_total{outcome="dropped"} 2"#,
            r#"meshgate_rpc_requests_total{rpc="DoGet",code="NOT_FOUND"} 1"#,
            r#"meshgate_rpc_duration_seconds_count{rpc="DoGet"} 1"#,
            r#"meshgate_cache_requests_total{cache="grants",result="hit"} 5"#,
            r#"meshgate_port_up{product="sales/orders",port="v1",adapter="files"} 0"#,
            r#"meshgate_catalog_reloads_total{outcome="failed"} 1"#,
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
