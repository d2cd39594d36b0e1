//! Usage of products from the audit log: reads, rows and distinct consumers per day.
//!
//! One aggregation over the recent part of the log answers every product; it is kept for
//! [`USAGE_TTL`], so a catalog page costs no scan of its own. Only counts leave here, never who
//! read: the records themselves are the `_governance/audit` product, governed like any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use serde::Serialize;

use super::error::{Error, Result};

/// How long one aggregation of the log is reused.
pub(crate) const USAGE_TTL: Duration = Duration::from_secs(60);

/// The longest history a usage answer covers, in days.
pub(crate) const MAX_DAYS: u32 = 90;

/// One day of one product's use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageDay {
    /// The day (UTC), `YYYY-MM-DD`.
    pub day: String,
    /// Completed reads (DoGet streams that ended OK).
    pub reads: i64,
    /// Rows those reads delivered.
    pub rows: i64,
    /// Distinct consumers (subjects) who read.
    pub consumers: i64,
}

type Table = HashMap<(String, String), Vec<UsageDay>>;

/// The aggregation and when it was made.
#[derive(Debug, Default)]
pub(crate) struct UsageCache {
    last: Mutex<Option<(Instant, Arc<Table>)>>,
}

impl UsageCache {
    /// Daily use of `domain/product` over the last `days` days (oldest first, every day listed,
    /// zeros included), from `audit`, the audit log's table.
    pub(crate) async fn of(
        &self,
        audit: Arc<dyn TableProvider>,
        (domain, product): (&str, &str),
        days: u32,
        today: chrono::NaiveDate,
    ) -> Result<Vec<UsageDay>> {
        let table = self.table(audit, today).await?;
        let found = table.get(&(domain.to_string(), product.to_string()));
        let days = days.clamp(1, MAX_DAYS);
        Ok((0..days)
            .rev()
            .map(|back| {
                let day = (today - chrono::Days::new(u64::from(back))).format("%Y-%m-%d").to_string();
                found
                    .and_then(|v| v.iter().find(|d| d.day == day).cloned())
                    .unwrap_or(UsageDay { day, ..Default::default() })
            })
            .collect())
    }

    async fn table(&self, audit: Arc<dyn TableProvider>, today: chrono::NaiveDate) -> Result<Arc<Table>> {
        if let Some((at, t)) = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && at.elapsed() < USAGE_TTL
        {
            return Ok(Arc::clone(t));
        }
        let since = (today - chrono::Days::new(u64::from(MAX_DAYS))).format("%Y-%m-%d").to_string();
        let table = Arc::new(aggregate(audit, &since).await?);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), Arc::clone(&table)));
        Ok(table)
    }
}

/// Reads per product and day since `since` (a `YYYY-MM-DD` day).
async fn aggregate(audit: Arc<dyn TableProvider>, since: &str) -> Result<Table> {
    let internal = |e: datafusion::error::DataFusionError| Error::Internal(format!("usage from the audit log: {e}"));
    let ctx = SessionContext::new();
    ctx.register_table("audit", audit).map_err(internal)?;
    // `since` is a formatted date, never caller input.
    let sql = format!(
        "SELECT resource['domain'] AS domain, resource['product'] AS product, substr(time, 1, 10) AS day, \
                count(*) AS reads, coalesce(sum(outcome['rows']), 0) AS rows, count(DISTINCT actor['sub']) AS consumers \
         FROM audit \
         WHERE kind = 'read' AND rpc = 'DoGet' AND outcome['status'] = 'OK' AND time >= '{since}' \
           AND resource['domain'] IS NOT NULL \
         GROUP BY 1, 2, 3"
    );
    let batches = ctx.sql(&sql).await.map_err(internal)?.collect().await.map_err(internal)?;
    let mut out = Table::new();
    for b in &batches {
        let text = |i: usize| b.column(i).as_string::<i32>().clone();
        let int = |i: usize| b.column(i).as_primitive::<Int64Type>().clone();
        let (domain, product, day) = (text(0), text(1), text(2));
        let (reads, rows, consumers) = (int(3), int(4), int(5));
        for i in 0..b.num_rows() {
            if domain.is_null(i) || product.is_null(i) {
                continue;
            }
            out.entry((domain.value(i).to_string(), product.value(i).to_string())).or_default().push(UsageDay {
                day: day.value(i).to_string(),
                reads: reads.value(i),
                rows: rows.value(i),
                consumers: consumers.value(i),
            });
        }
    }
    Ok(out)
}
