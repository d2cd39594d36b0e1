//! Sharded reads: one product read split into N endpoints that together return every row once.
//!
//! ```text
//!  GetFlightInfo {"product": ..., "shards": N}
//!    plan (governed) ─► physical plan ─► its one file scan ─► the files it would read
//!    ─► split into N groups as DataFusion splits a scan (byte ranges where the format allows:
//!       Parquet row groups, CSV/JSON lines, IPC blocks; whole files otherwise)
//!    ─► N tickets, shard i pinning its files, sizes and ranges
//!  DoGet(ticket i)
//!    plan again (rules checked again) ─► physical plan ─► [`pin`]: the scan reads exactly the
//!    pinned files, taken from the current listing ─► guard check ─► stream
//! ```
//!
//! Files added after `GetFlightInfo` are not read by its endpoints; a pinned file that changed
//! size or is no longer listed for the caller (removed, or now outside the caller's row filter)
//! fails the endpoint with "call GetFlightInfo again" instead of returning different rows.
//!
//! A product not stored as files (PostgreSQL, another gateway, an in-memory copy) is split by
//! its contract's key instead: shard i of N takes the rows whose key hashes to i
//! ([`key_filter`]: XxHash64 of the key's text, a fixed function, so every replica and release
//! agrees). Each shard reads the storage and keeps its own rows; such a shard has no fixed row
//! order, so it cannot be resumed part-way.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray, UInt32Builder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::datasource::source::{DataSource, DataSourceExec};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use meshgate_proto::v1::PinnedFile;

use super::{Error, Result};

/// The one file scan of `plan`; any other storage (or more than one scan) cannot be pinned.
fn file_scan(plan: &Arc<dyn ExecutionPlan>, product: &str) -> Result<FileScanConfig> {
    let mut scans = Vec::new();
    let mut other = None;
    plan.apply(|node| {
        if node.children().is_empty() {
            match (node.as_ref() as &dyn Any)
                .downcast_ref::<DataSourceExec>()
                .and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
            {
                Some(config) => scans.push(config.clone()),
                None => other = Some(node.name().to_string()),
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| Error::execution(product, e))?;
    match (scans.len(), other) {
        (1, None) => Ok(scans.remove(0)),
        _ => Err(Error::Unshardable(product.to_string())),
    }
}

/// Every file `config` reads, whole, once, in path order (a scan may hold one file as several
/// byte ranges).
fn whole_files(config: &FileScanConfig) -> Vec<PartitionedFile> {
    let mut by_path = BTreeMap::new();
    for f in config.file_groups.iter().flat_map(|g| g.iter()) {
        by_path.entry(f.object_meta.location.to_string()).or_insert_with(|| {
            let mut whole = f.clone();
            whole.range = None;
            whole
        });
    }
    by_path.into_values().collect()
}

/// Every file `plan` reads, when it is one file scan; `None` for any other storage.
pub(crate) fn listed_files(plan: &Arc<dyn ExecutionPlan>) -> Option<Vec<PartitionedFile>> {
    file_scan(plan, "").ok().map(|c| whole_files(&c))
}

/// Splits what `plan` reads into `count` shards; each entry is one shard's pinned files (some
/// may be empty when there is less data than shards).
pub(crate) fn assign(plan: &Arc<dyn ExecutionPlan>, count: u32, product: &str) -> Result<Vec<Vec<PinnedFile>>> {
    let config = file_scan(plan, product)?;
    let files = whole_files(&config);
    let mut single = config.clone();
    single.file_groups = vec![FileGroup::new(files.clone())];
    let split = single
        .repartitioned(count as usize, 0, None)
        .map_err(|e| Error::execution(product, e))?
        .and_then(|s| s.downcast_ref::<FileScanConfig>().map(|c| c.file_groups.clone()));
    let groups: Vec<Vec<PartitionedFile>> = match split {
        Some(groups) => groups.into_iter().map(|g| g.files().to_vec()).collect(),
        None => by_size(files, count as usize),
    };
    let mut shards: Vec<Vec<PinnedFile>> = groups
        .into_iter()
        .map(|g| {
            g.into_iter()
                .map(|f| PinnedFile {
                    path: f.object_meta.location.to_string(),
                    size: f.object_meta.size,
                    range_start: f.range.as_ref().map(|r| r.start),
                    range_end: f.range.as_ref().map(|r| r.end),
                })
                .collect()
        })
        .collect();
    shards.resize(count as usize, Vec::new());
    Ok(shards)
}

/// A fixed generator (SplitMix64) seeded with `seed`, so an order holds across releases.
fn generator(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Fisher–Yates over `items`, drawing from `next`.
fn permute<T>(items: &mut [T], next: &mut impl FnMut() -> u64) {
    for i in (1..items.len()).rev() {
        items.swap(i, (next() % (i as u64 + 1)) as usize);
    }
}

/// Orders `shards` and the files within each by `seed`: the same seed, the same order.
pub(crate) fn shuffle(shards: &mut [Vec<PinnedFile>], seed: u64) {
    let mut next = generator(seed);
    permute(shards, &mut next);
    for files in shards.iter_mut() {
        permute(files, &mut next);
    }
}

/// The order in which the endpoints of a read split by key list its `count` shards: by
/// `seed` when given, else in index order.
pub(crate) fn key_order(count: u32, seed: Option<u64>) -> Vec<u32> {
    let mut order: Vec<u32> = (0..count).collect();
    if let Some(seed) = seed {
        permute(&mut order, &mut generator(seed));
    }
    order
}

/// The predicate that keeps the rows of `shard` (index of count) of a read split by the hash
/// of `key`'s columns.
pub(crate) fn key_filter(key: &[String], index: u32, count: u32) -> Expr {
    let mut args = vec![lit(count)];
    args.extend(key.iter().map(|c| col(datafusion::common::Column::new_unqualified(c))));
    ScalarUDF::new_from_impl(ShardOf::default()).call(args).eq(lit(index))
}

/// `meshgate_shard_of(count, key...)`: which of `count` shards a row belongs to, by the
/// XxHash64 (seed 0) of its key columns' text, each preceded by a byte saying whether it is
/// null, taken modulo `count`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ShardOf {
    signature: Signature,
}

impl Default for ShardOf {
    fn default() -> Self {
        Self { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ShardOf {
    fn name(&self) -> &str {
        "meshgate_shard_of"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        use std::hash::Hasher;
        let count = match args.args.first() {
            Some(ColumnarValue::Scalar(ScalarValue::UInt32(Some(n)))) if *n > 0 => u64::from(*n),
            _ => return datafusion::common::exec_err!("meshgate_shard_of takes a positive shard count first"),
        };
        let rows = args.number_rows;
        let texts = args.args[1..]
            .iter()
            .map(|a| {
                let a = a.to_array(rows)?;
                Ok(datafusion::arrow::compute::cast(&a, &DataType::Utf8)?)
            })
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let texts: Vec<&StringArray> = texts.iter().filter_map(|a| a.as_any().downcast_ref::<StringArray>()).collect();
        let mut out = UInt32Builder::with_capacity(rows);
        for row in 0..rows {
            let mut h = twox_hash::XxHash64::with_seed(0);
            for t in &texts {
                if t.is_null(row) {
                    h.write(&[0]);
                } else {
                    h.write(&[1]);
                    h.write(t.value(row).as_bytes());
                }
            }
            out.append_value((h.finish() % count) as u32);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Whole files in `count` groups of similar size (largest first, each to the lightest group):
/// for formats that cannot be read by byte range.
fn by_size(mut files: Vec<PartitionedFile>, count: usize) -> Vec<Vec<PartitionedFile>> {
    files.sort_by(|a, b| {
        b.object_meta.size.cmp(&a.object_meta.size).then(a.object_meta.location.cmp(&b.object_meta.location))
    });
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); count];
    for f in files {
        if let Some((size, group)) = groups.iter_mut().min_by_key(|g| g.0) {
            *size += f.object_meta.size;
            group.push(f);
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// `plan` with its file scan reading exactly `pinned`, taken from what it lists now.
pub(crate) fn pin(
    plan: Arc<dyn ExecutionPlan>,
    pinned: &[PinnedFile],
    product: &str,
) -> Result<Arc<dyn ExecutionPlan>> {
    let config = file_scan(&plan, product)?;
    let current: HashMap<String, &PartitionedFile> =
        config.file_groups.iter().flat_map(|g| g.iter()).map(|f| (f.object_meta.location.to_string(), f)).collect();
    let changed = || Error::ShardChanged { product: product.to_string() };
    let mut files = Vec::with_capacity(pinned.len());
    for p in pinned {
        let now = current.get(&p.path).filter(|f| f.object_meta.size == p.size).ok_or_else(changed)?;
        let mut file = (*now).clone();
        file.range = None;
        if let (Some(start), Some(end)) = (p.range_start, p.range_end) {
            file = file.with_range(start, end);
        }
        files.push(file);
    }
    let mut config = config;
    config.file_groups = vec![FileGroup::new(files)];
    let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
    plan.transform_up(|node| {
        let is_scan = (node.as_ref() as &dyn Any)
            .downcast_ref::<DataSourceExec>()
            .is_some_and(|d| d.data_source().downcast_ref::<FileScanConfig>().is_some());
        Ok(if is_scan { Transformed::yes(Arc::clone(&scan)) } else { Transformed::no(node) })
    })
    .map(|t| t.data)
    .map_err(|e| Error::execution(product, e))
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{CsvReadOptions, SessionContext};

    use super::*;

    /// The files in `dir` as table `t`, listed afresh (a new context has no listing cache).
    async fn listed(dir: &std::path::Path) -> (SessionContext, Arc<dyn ExecutionPlan>) {
        let ctx = SessionContext::new();
        ctx.register_csv("t", dir.to_str().unwrap(), CsvReadOptions::new()).await.unwrap();
        let plan = ctx.sql("SELECT n FROM t").await.unwrap().create_physical_plan().await.unwrap();
        (ctx, plan)
    }

    async fn count(ctx: &SessionContext, plan: Arc<dyn ExecutionPlan>) -> Vec<i64> {
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await.unwrap();
        let mut out = Vec::new();
        for b in batches {
            let col = b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
            out.extend(col.values().iter().copied());
        }
        out
    }

    #[tokio::test]
    async fn shards_of_files_read_every_row_once_and_only_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Vec::new();
        for f in 0..3 {
            let rows: Vec<String> = (0..1000).map(|i| (f * 1000 + i).to_string()).collect();
            all.extend((0..1000).map(|i| (f * 1000 + i) as i64));
            std::fs::write(dir.path().join(format!("part-{f}.csv")), format!("n\n{}\n", rows.join("\n"))).unwrap();
        }
        let (ctx, plan) = listed(dir.path()).await;
        for n in [2, 5, 16] {
            let shards = assign(&plan, n, "t").unwrap();
            assert_eq!(shards.len(), n as usize);
            let mut got = Vec::new();
            for files in &shards {
                got.extend(count(&ctx, pin(Arc::clone(&plan), files, "t").unwrap()).await);
            }
            got.sort_unstable();
            assert_eq!(got, all, "{n} shards");
        }
        // A file added later is not read by the shards assigned before it.
        let shards = assign(&plan, 2, "t").unwrap();
        std::fs::write(dir.path().join("part-9.csv"), "n\n-1\n").unwrap();
        let (ctx, later) = listed(dir.path()).await;
        let mut got = Vec::new();
        for files in &shards {
            got.extend(count(&ctx, pin(Arc::clone(&later), files, "t").unwrap()).await);
        }
        assert_eq!(got.len(), all.len());
        let (ctx, whole) = listed(dir.path()).await;
        assert_eq!(count(&ctx, whole).await.len(), all.len() + 1, "the new file is listed");
        // A pinned file that changed fails instead.
        std::fs::write(dir.path().join("part-0.csv"), "n\n1\n").unwrap();
        let (_, changed) = listed(dir.path()).await;
        let touched = shards.iter().find(|s| s.iter().any(|f| f.path.ends_with("part-0.csv"))).unwrap();
        assert!(matches!(pin(changed, touched, "t"), Err(Error::ShardChanged { .. })));
    }

    #[test]
    fn a_seed_gives_one_order() {
        let file = |i: u64| PinnedFile { path: format!("f{i}"), size: i, range_start: None, range_end: None };
        let shards: Vec<Vec<PinnedFile>> = (0..4).map(|s| (0..5).map(|f| file(s * 10 + f)).collect()).collect();
        let order = |seed| {
            let mut s = shards.clone();
            shuffle(&mut s, seed);
            s
        };
        assert_eq!(order(7), order(7));
        assert_ne!(order(7), order(8));
        let mut all: Vec<String> = order(7).into_iter().flatten().map(|f| f.path).collect();
        all.sort();
        let mut before: Vec<String> = shards.into_iter().flatten().map(|f| f.path).collect();
        before.sort();
        assert_eq!(all, before, "a permutation: nothing lost or repeated");
    }

    #[tokio::test]
    async fn storage_other_than_files_is_not_split() {
        let ctx = SessionContext::new();
        let plan =
            ctx.sql("SELECT * FROM (VALUES (1), (2)) AS v(n)").await.unwrap().create_physical_plan().await.unwrap();
        let e = assign(&plan, 2, "a/b").unwrap_err();
        assert!(matches!(e, Error::Unshardable(_)), "{e}");
        assert!(e.to_string().contains("read it as one stream"));
    }

    #[tokio::test]
    async fn shards_by_key_take_every_row_once_whatever_the_key_type() {
        let ctx = SessionContext::new();
        let sql = "SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, NULL), (4, 'd'), (5, 'e'), (6, 'f'), (7, 'g'), (8, 'h')) AS v(n, s)";
        for key in [vec!["n".to_string()], vec!["s".to_string()], vec!["n".to_string(), "s".to_string()]] {
            let mut got = Vec::new();
            let mut sizes = Vec::new();
            for index in 0..3 {
                let df = ctx.sql(sql).await.unwrap().filter(key_filter(&key, index, 3)).unwrap();
                let batches = df.select_columns(&["n"]).unwrap().collect().await.unwrap();
                let before = got.len();
                for b in batches {
                    let c = b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
                    got.extend(c.values().iter().copied());
                }
                sizes.push(got.len() - before);
            }
            got.sort_unstable();
            assert_eq!(got, (1..=8).collect::<Vec<i64>>(), "{key:?}");
            assert!(sizes.iter().filter(|n| **n > 0).count() >= 2, "{key:?} spreads rows: {sizes:?}");
        }
        // The hash is fixed: these assignments hold across releases and replicas.
        let df = ctx.sql("SELECT * FROM (VALUES (1), (2), (3), (4)) AS v(n)").await.unwrap();
        let df = df.select(vec![ScalarUDF::new_from_impl(ShardOf::default()).call(vec![lit(4u32), col("n")])]).unwrap();
        let b = &df.collect().await.unwrap()[0];
        let c = b.column(0).as_any().downcast_ref::<arrow::array::UInt32Array>().unwrap();
        assert_eq!(c.values().to_vec(), SHARDS_OF_1_TO_4.to_vec());
    }

    /// XxHash64(seed 0) of `[1, "1"]` ... `[1, "4"]`, modulo 4.
    const SHARDS_OF_1_TO_4: [u32; 4] = [2, 1, 3, 0];

    #[test]
    fn key_orders_are_permutations_fixed_by_the_seed() {
        assert_eq!(key_order(4, None), vec![0, 1, 2, 3]);
        assert_eq!(key_order(6, Some(3)), key_order(6, Some(3)));
        let mut o = key_order(6, Some(3));
        o.sort_unstable();
        assert_eq!(o, (0..6).collect::<Vec<u32>>());
    }
}
