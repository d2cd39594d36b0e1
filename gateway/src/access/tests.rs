//! The core on its own: discovery, decisions, plans, tickets and execution, without gRPC.

use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use futures::TryStreamExt;
use meshgate_adapters::memory::MemoryAdapter;

use super::*;
use crate::GatewayConfig;

async fn core_on(mesh: &Path, options: CoreOptions) -> Arc<AccessCore> {
    let (ctx, catalog) =
        crate::server::open_catalog(&GatewayConfig::for_mesh(mesh), mesh, MemoryAdapter::default()).unwrap();
    let signer = TicketSigner::random(Duration::from_secs(60));
    AccessCore::builder(catalog, ctx, signer).with_options(options).build().await.unwrap()
}

fn sample() -> tempfile::TempDir {
    let mesh = tempfile::tempdir().unwrap();
    crate::sample::write(mesh.path(), 0.02).unwrap();
    mesh
}

fn governed(max_reads: usize) -> CoreOptions {
    CoreOptions { governed: true, exec_threads: 1, max_reads, ..Default::default() }
}

fn user(name: &str, roles: &[&str], region: Option<&str>) -> Call {
    let mut p = Principal::anonymous();
    p.subject = name.into();
    p.issuer = "test".into();
    p.roles = roles.iter().map(|r| r.to_string()).collect();
    p.attributes.extend(region.map(|r| ("region".to_string(), r.to_string())));
    Call { rpc: "test".into(), principal: p, client: Client::default() }
}

fn product(domain: &str, name: &str) -> ReadRequest {
    ReadRequest::from_path(&[domain.to_string(), name.to_string()]).unwrap()
}

async fn read(core: &Arc<AccessCore>, call: &Call, request: ReadRequest) -> Result<Vec<RecordBatch>> {
    let plan = core.authorize(call, request).await?;
    core.execute(call, plan, Shard::WHOLE).await?.batches.try_collect().await
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let a = arrow::compute::cast(b.column_by_name(column).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
        out.extend(a.as_string::<i32>().iter().map(|v| v.unwrap_or("").to_string()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_authorize_execute_without_grpc() {
    let mesh = sample();
    let core = core_on(mesh.path(), governed(8)).await;
    let alice = user("alice", &["analyst"], Some("EMEA"));

    // Discovery: plans of whole ports, for products alice may read.
    let found = core.discover(&alice.principal, b"").await.unwrap();
    let addresses: Vec<String> = found.iter().map(|p| p.reads()[0].product.address()).collect();
    assert!(addresses.contains(&"sales/orders".to_string()), "{addresses:?}");
    let tagged = core.discover(&alice.principal, b"tag:reference").await.unwrap();
    let tagged: Vec<String> = tagged.iter().map(|p| p.reads()[0].product.address()).collect();
    assert_eq!(tagged, ["logistics/warehouses"]);

    // A PATH read goes through the governed table: alice's row filter holds.
    let orders = read(&core, &alice, product("sales", "orders")).await.unwrap();
    assert!(rows(&orders) > 0);
    assert!(strings(&orders, "region").iter().all(|r| r == "EMEA"));

    // The same catalog serves SQL, under the same rules.
    let sql = |q: &str| ReadRequest::Sql(SqlRead::new(q));
    let counted = read(&core, &alice, sql("SELECT count(*) AS n FROM mesh.sales.orders")).await.unwrap();
    assert_eq!(counted[0].column(0).as_primitive::<Int64Type>().value(0) as usize, rows(&orders));
    let hidden = read(&core, &alice, sql("SELECT * FROM sales.orders WHERE region <> 'EMEA'")).await.unwrap();
    assert_eq!(rows(&hidden), 0, "a caller filter cannot widen the row filter");
    let profiles = read(&core, &alice, sql("SELECT email FROM mesh.customers.profiles__v1 LIMIT 20")).await.unwrap();
    assert!(strings(&profiles, "email").iter().all(|e| !e.contains('@')), "email is masked in SQL too");

    // Refusals: denied by policy, missing, not a query, a shard it cannot honour.
    let pat = user("pat", &["analyst", "partner"], Some("APAC"));
    assert!(matches!(core.authorize(&pat, product("sales", "orders")).await, Err(Error::Denied { .. })));
    assert!(matches!(core.authorize(&pat, sql("SELECT * FROM sales.orders")).await, Err(Error::Denied { .. })));
    assert!(matches!(core.authorize(&alice, product("sales", "nope")).await, Err(Error::Catalog(_))));
    for statement in [
        "CREATE TABLE t AS SELECT 1",
        "EXPLAIN CREATE TABLE t AS SELECT 1",
        "COPY sales.orders TO 'x'",
        "SET datafusion.execution.batch_size = 1",
        "INSERT INTO sales.orders SELECT * FROM sales.orders",
    ] {
        assert!(matches!(core.authorize(&alice, sql(statement)).await, Err(Error::NotAQuery)), "{statement}");
    }
    let analyze = core.authorize(&alice, sql("EXPLAIN ANALYZE SELECT * FROM sales.orders")).await;
    assert!(matches!(analyze, Err(Error::Unsupported(_))));
    for statement in ["SELECT * FROM read_parquet('/etc/passwd')", "SELECT * FROM sales.orders, generate_series(1, 3)"]
    {
        let refused = core.authorize(&alice, sql(statement)).await;
        assert!(matches!(&refused, Err(Error::TableFunction(_))), "{statement}: {refused:?}");
    }
    let plan = core.authorize(&alice, product("sales", "orders")).await.unwrap();
    let half = Shard { index: 0, count: 2 };
    assert!(matches!(core.execute(&alice, plan, half).await, Err(Error::Shard { index: 0, count: 2 })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_carry_the_read_and_bind_the_caller() {
    let mesh = sample();
    let core = core_on(mesh.path(), governed(8)).await;
    let alice = user("alice", &["analyst"], Some("EMEA"));
    let bob = user("bob", &["analyst"], Some("AMER"));
    let query = ReadRequest::Sql(SqlRead::new("SELECT region, count(*) AS n FROM sales.orders GROUP BY region"));
    let plan = core.authorize(&alice, query).await.unwrap();
    let ticket = core.ticket(&plan, Shard::WHOLE).unwrap().ticket;
    let got: Vec<RecordBatch> =
        core.read_ticket(&alice, &ticket, None).await.unwrap().batches.try_collect().await.unwrap();
    assert_eq!(strings(&got, "region"), ["EMEA"]);
    assert!(matches!(core.read_ticket(&bob, &ticket, None).await, Err(Error::ForeignTicket)));
    // A ticket for a shard the read cannot be split into is refused, never served whole.
    let split = core.signer.sign(plan.claims(Shard { index: 1, count: 2 }).unwrap(), SystemTime::now());
    assert!(matches!(core.read_ticket(&alice, &split, None).await, Err(Error::Shard { index: 1, count: 2 })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_past_the_limit_are_refused_until_one_ends() {
    let mesh = sample();
    let core = core_on(mesh.path(), governed(1)).await;
    let alice = user("alice", &["analyst"], Some("EMEA"));
    let first = core.execute(&alice, core.authorize(&alice, product("sales", "orders")).await.unwrap(), Shard::WHOLE);
    let first = first.await.unwrap();
    let plan = core.authorize(&alice, product("logistics", "warehouses")).await.unwrap();
    let e = core.execute(&alice, plan, Shard::WHOLE).await.unwrap_err();
    assert!(matches!(e, Error::Busy { limit: 1 }), "{e}");
    assert!(e.to_string().contains("--max-concurrent-reads"), "{e}");
    drop(first);
    let plan = core.authorize(&alice, product("logistics", "warehouses")).await.unwrap();
    let batches: Vec<RecordBatch> =
        core.execute(&alice, plan, Shard::WHOLE).await.unwrap().batches.try_collect().await.unwrap();
    assert_eq!(rows(&batches), 24);
}

/// Each reload writes a contract version and a row filter naming the same number; every read
/// planned while reloads run must see a matching pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_rules_and_catalog_together() {
    let mesh = sample();
    let contract = mesh.path().join("sales/orders/v1.odcs.yaml");
    let rules = mesh.path().join("sales/_governance.yaml");
    let original = std::fs::read_to_string(&contract).unwrap();
    let write = |i: u32| {
        let text = original.replacen("version: 1.0.0", &format!("version: 1.0.{i}"), 1);
        std::fs::write(&contract, text).unwrap();
        let filter = format!(
            "row_filters:\n  - product: orders\n    roles: [analyst]\n    filter: \"region = principal.region AND 'v{i}' = 'v{i}'\"\n"
        );
        std::fs::write(&rules, filter).unwrap();
    };
    write(0);
    let core = core_on(mesh.path(), governed(8)).await;
    let alice = user("alice", &["analyst"], Some("EMEA"));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (core, alice, done) = (Arc::clone(&core), alice.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let plan = core.authorize(&alice, product("sales", "orders")).await.unwrap();
                let r = &plan.reads()[0];
                let version = r.port.contract.version.trim_start_matches("1.0.").to_string();
                let filters = &r.grant.as_ref().unwrap().row_filters;
                assert_eq!(filters.len(), 1);
                assert!(filters[0].contains(&format!("'v{version}'")), "contract {version} with rules {filters:?}");
                seen.insert(version);
            }
            seen
        })
    };
    for i in 1..=20 {
        write(i);
        let report = core.reload().await.unwrap();
        assert!(report.governance_problem.is_none() && report.problems.is_empty(), "{report:?}");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.await.unwrap();
    assert!(seen.len() > 1, "the reader saw only {seen:?}");
}
