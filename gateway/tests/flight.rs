//! The Flight surface, through a real `FlightClient` against a gateway on port 0.

mod common;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::Schema;
use arrow_flight::{FlightDescriptor, Ticket};
use common::{Fixture, rows, status};
use futures::TryStreamExt;
use tonic::Code;

#[tokio::test]
async fn lists_every_product_and_filters_by_tag_and_text() {
    let mut f = Fixture::sample().await;
    let all: Vec<_> = f.client.list_flights("").await.unwrap().try_collect().await.unwrap();
    let mut paths: Vec<String> = all.iter().map(|i| i.flight_descriptor.as_ref().unwrap().path.join("/")).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "customers/profiles/v1",
            "logistics/shipments/v1",
            "logistics/warehouses/v1",
            "sales/daily_revenue/v1",
            "sales/orders/v1"
        ]
    );
    let pii: Vec<_> = f.client.list_flights("tag:pii").await.unwrap().try_collect().await.unwrap();
    assert_eq!(pii.len(), 1);
    let text: Vec<_> = f.client.list_flights("WAREHOUSE").await.unwrap().try_collect().await.unwrap();
    assert_eq!(text.len(), 2, "warehouses, and shipments whose description names warehouses");
    f.stop().await;
}

#[tokio::test]
async fn reads_a_product_whole_with_contract_metadata() {
    let mut f = Fixture::sample().await;
    let info = f.info(&["customers", "profiles"]).await.unwrap();
    let schema = Schema::try_from(info.clone()).unwrap();
    assert_eq!(schema.metadata()["meshgate.contract_version"], "1.0.0");
    assert_eq!(schema.metadata()["meshgate.owner"], "customer-360");
    assert_eq!(schema.field_with_name("email").unwrap().metadata()["meshgate.classification"], "pii");
    assert_eq!(info.total_records, -1, "CSV row counts are not known without reading");
    let batches = f.read(&info).await.unwrap();
    assert_eq!(rows(&batches), 1000);
    assert_eq!(batches[0].schema().fields().len(), 8);

    let orders = f.info(&["sales", "orders", "v1"]).await.unwrap();
    assert_eq!(orders.total_records, 4000, "Parquet footers give an exact count");
    let announced = Schema::try_from(orders.clone()).unwrap();
    for name in ["status", "region"] {
        // Older Flight SQL/JDBC clients cannot read view types.
        assert_eq!(announced.field_with_name(name).unwrap().data_type(), &arrow::datatypes::DataType::Utf8, "{name}");
    }
    let batches = f.read(&orders).await.unwrap();
    assert_eq!(rows(&batches), 4000);
    let streamed = batches[0].schema();
    let announced = Schema::try_from(orders).unwrap();
    let strip = |s: &Schema| {
        Schema::new(s.fields().iter().map(|f| f.as_ref().clone().with_metadata(Default::default())).collect::<Vec<_>>())
    };
    assert_eq!(strip(&streamed), strip(&announced), "announced and streamed schemas agree, nullability included");
    f.stop().await;
}

#[tokio::test]
async fn json_query_projects_filters_and_limits() {
    let mut f = Fixture::sample().await;
    let info = f
        .query(r#"{"product": "sales/orders", "columns": ["order_id", "region"], "filter": "region = 'EMEA' AND amount > 100", "limit": 25}"#)
        .await
        .unwrap();
    let batches = f.read(&info).await.unwrap();
    assert_eq!(rows(&batches), 25);
    for b in &batches {
        assert_eq!(b.num_columns(), 2);
        let region = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(region.iter().all(|r| r == Some("EMEA")));
    }
    // The filter alone: every matching row, and only those.
    let info =
        f.query(r#"{"product": "sales/orders", "columns": ["amount"], "filter": "amount > 1500"}"#).await.unwrap();
    let batches = f.read(&info).await.unwrap();
    assert!(rows(&batches) > 0);
    for b in &batches {
        let a = b.column(0).as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
        assert!(a.iter().all(|x| x.unwrap() > 1500.0));
    }
    f.stop().await;
}

#[tokio::test]
async fn get_schema_on_both_descriptor_kinds() {
    let mut f = Fixture::sample().await;
    let s =
        f.client.get_schema(FlightDescriptor::new_path(vec!["logistics".into(), "warehouses".into()])).await.unwrap();
    assert_eq!(s.fields().len(), 6);
    let s = f
        .client
        .get_schema(FlightDescriptor::new_cmd(r#"{"product":"logistics/shipments","columns":["order_id","carrier"]}"#))
        .await
        .unwrap();
    assert_eq!(s.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["order_id", "carrier"]);
    f.stop().await;
}

#[tokio::test]
async fn actions_describe_health_reload() {
    let mut f = Fixture::sample().await;
    let names: Vec<String> = f
        .client
        .list_actions()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.r#type)
        .collect();
    assert_eq!(names, ["describe", "health", "reload", "quality", "lineage", "check-quality"]);
    let d = f.action("describe", "customers/profiles").await.unwrap();
    assert_eq!(d["product"]["owner"], "customer-360");
    assert_eq!(d["contract"]["columns"][2]["classification"], "pii");
    assert!(!d.to_string().contains("profiles.csv"), "storage locations are not published");
    let h = f.action("health", "").await.unwrap();
    assert_eq!(h["status"], "ok");
    let r = f.action("reload", "").await.unwrap();
    assert_eq!(r["available"], 5);
    let e = f.action("nope", "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("describe"));
    f.stop().await;
}

#[tokio::test]
async fn unknown_names_are_not_found_and_say_what_exists() {
    let mut f = Fixture::sample().await;
    let e = f.info(&["marketing", "x"]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("`sales`"), "{}", e.message());
    let e = f.info(&["sales", "refunds"]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("`orders`"), "{}", e.message());
    let e = f.info(&["sales", "orders", "v9"]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("v1 (1.0.0)"), "{}", e.message());
    f.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let mut f = Fixture::sample().await;
    for path in [
        &["..", "etc"][..],
        &["sales", "../../etc/passwd"],
        &["sales"],
        &["a", "b", "c", "d"],
        &["sales", "orders/../x"],
    ] {
        let e = f.info(path).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{path:?}: {}", e.message());
        assert!(!e.message().contains(f.mesh.path().to_str().unwrap()));
    }
    for (q, hint) in [
        ("{not json", "valid meshgate query"),
        (r#"{"product":"sales/orders","colums":["x"]}"#, "colums"),
        (r#"{"product":"sales/orders","columns":["nope"]}"#, "no column `nope`"),
        (r#"{"product":"sales/orders","filter":"nope > 1"}"#, "nope"),
        (r#"{"product":"sales/orders","filter":"order_id IN (SELECT 1)"}"#, "subqueries"),
        (r#"{"product":"sales/orders","filter":"EXISTS (SELECT * FROM generate_series(1, 3))"}"#, "subqueries"),
        (r#"{"product":"sales/orders","filter":"amount + 1"}"#, "boolean"),
        (r#"{"product":"sales/orders","filter":"count(*) > 1"}"#, "aggregate"),
        (r#"{"product":"sales/orders","filter":"amount > 1; DROP TABLE x"}"#, "filter"),
    ] {
        let e = f.query(q).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{q}: {}", e.message());
        assert!(e.message().contains(hint), "{q}: {}", e.message());
    }
    let e = f.client.do_put(futures::stream::empty()).await.err().map(status);
    assert_eq!(e.map(|s| s.code()), Some(Code::Unimplemented));
    f.stop().await;
}

#[tokio::test]
async fn tampered_garbage_and_foreign_tickets_are_refused() {
    let mut f = Fixture::sample().await;
    let info = f.info(&["logistics", "warehouses"]).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap().ticket;
    assert_eq!(rows(&f.get(Ticket::new(ticket.clone())).await.unwrap()), 24);

    // Flip one bit in the signed claims (past the protobuf header) and at the end.
    for i in [6, ticket.len() / 2, ticket.len() - 1] {
        let mut bad = ticket.to_vec();
        bad[i] ^= 0x01;
        let e = f.get(Ticket::new(bad)).await.unwrap_err();
        assert!(matches!(e.code(), Code::Unauthenticated | Code::InvalidArgument), "{i}: {e}");
    }
    let e = f.get(Ticket::new(b"garbage".to_vec())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = f.get(Ticket::new(ticket[..ticket.len() - 3].to_vec())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A ticket from another gateway (another key) is refused.
    let mut other = Fixture::sample().await;
    let foreign = other.info(&["logistics", "warehouses"]).await.unwrap().endpoint[0].ticket.clone().unwrap();
    let e = f.get(foreign).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    other.stop().await;
    f.stop().await;
}

#[tokio::test]
async fn expired_tickets_are_refused() {
    let mut f = Fixture::sample_with(|c| c.ticket_ttl = std::time::Duration::ZERO).await;
    let info = f.info(&["logistics", "warehouses"]).await.unwrap();
    let e = f.read(&info).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"));
    f.stop().await;
}

#[tokio::test]
async fn a_broken_product_does_not_take_the_others_down() {
    let mesh = tempfile::tempdir().unwrap();
    meshgate::sample::write(mesh.path(), 0.02).unwrap();
    common::write(
        &mesh.path().join("sales/returns/product.odps.yaml"),
        "apiVersion: v1.0.0\nkind: DataProduct\nid: r\nstatus: active\noutputPorts:\n  - name: v1\n    version: 1.0.0\n    contractId: r1\n",
    );
    common::write(
        &mesh.path().join("sales/returns/v1.odcs.yaml"),
        "apiVersion: v3.1.0\nkind: DataContract\nid: r1\nversion: 1.0.0\nstatus: active\nschema:\n  - name: t\n    properties:\n      - name: a\n        logicalType: integer\ncustomProperties:\n  - property: meshgate.binding\n    value: {adapter: files, location: data/, format: parquet, compresion: zstd}\n",
    );
    let config = meshgate::GatewayConfig::for_mesh(mesh.path());
    let mut f = Fixture::start(mesh, config, Default::default()).await;
    let e = f.info(&["sales", "returns"]).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("compresion"), "{}", e.message());
    assert!(e.message().contains("sales/returns/v1.odcs.yaml"), "{}", e.message());
    let d = f.action("describe", "sales/returns").await.unwrap();
    assert_eq!(d["status"], "unavailable");
    let orders = f.info(&["sales", "orders"]).await.unwrap();
    assert_eq!(rows(&f.read(&orders).await.unwrap()), 4000);
    let listed: Vec<_> = f.client.list_flights("").await.unwrap().try_collect().await.unwrap();
    assert_eq!(listed.len(), 5);
    f.stop().await;
}

#[tokio::test]
async fn data_that_disappears_is_unavailable_and_the_server_keeps_running() {
    let mut f = Fixture::sample_with(|c| c.no_watch = true).await;
    let info = f.info(&["customers", "profiles"]).await.unwrap();
    std::fs::remove_file(f.path("customers/profiles/data/profiles.csv")).unwrap();
    let e = f.read(&info).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(!e.message().contains(f.mesh.path().to_str().unwrap()), "leaks a path: {}", e.message());
    // GetFlightInfo plans without touching storage: it still answers, and the next DoGet is
    // what reports the loss, again as UNAVAILABLE.
    let again = f.info(&["customers", "profiles"]).await.expect("planning needs no data");
    assert_eq!(f.read(&again).await.unwrap_err().code(), Code::Unavailable);
    let h = f.action("health", "").await.unwrap();
    assert_eq!(h["status"], "degraded");
    let w = f.info(&["logistics", "warehouses"]).await.unwrap();
    assert_eq!(rows(&f.read(&w).await.unwrap()), 24);
    f.stop().await;
}

#[tokio::test]
async fn a_refused_reload_keeps_the_last_good_version() {
    let mut f = Fixture::sample_with(|c| c.no_watch = true).await;
    std::fs::write(f.path("logistics/warehouses/v1.odcs.yaml"), "apiVersion: v3.1.0\nkind: [").unwrap();
    let r = f.action("reload", "").await.unwrap();
    assert_eq!(r["available"], 5);
    assert!(r["problems"]["logistics/warehouses"][0]["file"].as_str().unwrap().ends_with("v1.odcs.yaml"));
    let w = f.info(&["logistics", "warehouses"]).await.unwrap();
    assert_eq!(rows(&f.read(&w).await.unwrap()), 24);
    let d = f.action("describe", "logistics/warehouses").await.unwrap();
    assert_eq!(d["status"], "serving_last_good");
    f.stop().await;
}

#[tokio::test]
async fn a_reload_reopens_only_the_products_whose_manifests_changed() {
    let mut f = Fixture::sample_with(|c| c.no_watch = true).await;
    let products = |f: &Fixture| {
        f.gateway()
            .core()
            .snapshot()
            .catalog
            .products()
            .map(|p| (p.address(), std::sync::Arc::clone(p)))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let before = products(&f);
    let contract = f.path("logistics/warehouses/v1.odcs.yaml");
    let text = std::fs::read_to_string(&contract).unwrap().replace("version: 1.0.0", "version: 1.1.0");
    std::fs::write(&contract, text).unwrap();
    f.action("reload", "").await.unwrap();
    let after = products(&f);
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    for (address, old) in &before {
        let kept = std::sync::Arc::ptr_eq(old, &after[address]);
        assert_eq!(kept, address != "logistics/warehouses", "{address}: kept {kept}");
    }
    let info = f.info(&["logistics", "warehouses"]).await.unwrap();
    assert_eq!(Schema::try_from(info).unwrap().metadata()["meshgate.contract_version"], "1.1.0");
    f.stop().await;
}

#[tokio::test]
async fn the_catalog_reloads_when_files_change() {
    let mut f = Fixture::sample().await;
    let mut generations = f.gateway().core().subscribe();
    let before = *generations.borrow_and_update();
    let contract = f.path("logistics/warehouses/v1.odcs.yaml");
    let text = std::fs::read_to_string(&contract).unwrap().replace("version: 1.0.0", "version: 1.1.0");
    std::fs::write(&contract, text).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), generations.wait_for(|g| *g > before))
        .await
        .unwrap()
        .unwrap();
    let info = f.info(&["logistics", "warehouses"]).await.unwrap();
    assert_eq!(Schema::try_from(info).unwrap().metadata()["meshgate.contract_version"], "1.1.0");
    f.stop().await;
}

#[tokio::test]
async fn memory_products_serve_through_the_same_path() {
    use arrow::datatypes::{DataType, Field};
    let mesh = tempfile::tempdir().unwrap();
    common::write(
        &mesh.path().join("lab/points/product.odps.yaml"),
        "apiVersion: v1.0.0\nkind: DataProduct\nid: p\nstatus: active\ntags: [lab]\noutputPorts:\n  - name: v1\n    version: 1.0.0\n    contractId: p1\n",
    );
    common::write(
        &mesh.path().join("lab/points/v1.odcs.yaml"),
        "apiVersion: v3.1.0\nkind: DataContract\nid: p1\nversion: 2.0.0\nstatus: active\nschema:\n  - name: t\n    properties:\n      - name: x\n        logicalType: integer\ncustomProperties:\n  - property: meshgate.binding\n    value: {adapter: memory, dataset: points}\n",
    );
    let memory = meshgate_adapters::memory::MemoryAdapter::default();
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("hidden", DataType::Int64, false),
    ]));
    let batch = arrow::array::RecordBatch::try_new(
        std::sync::Arc::clone(&schema),
        vec![
            std::sync::Arc::new(Int64Array::from_iter_values(0..100)),
            std::sync::Arc::new(Int64Array::from_iter_values(0..100)),
        ],
    )
    .unwrap();
    memory.register("points", schema, vec![batch]).unwrap();
    let config = meshgate::GatewayConfig::for_mesh(mesh.path());
    let mut f = Fixture::start(mesh, config, memory).await;
    let info = f.query(r#"{"product":"lab/points","filter":"x >= 90"}"#).await.unwrap();
    let batches = f.read(&info).await.unwrap();
    assert_eq!(rows(&batches), 10);
    assert_eq!(batches[0].num_columns(), 1, "columns outside the contract are not served");
    let e = f.query(r#"{"product":"lab/points","filter":"hidden > 1"}"#).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "a filter cannot reach columns outside the contract");
    let s = f.info(&["lab", "points"]).await.unwrap();
    assert_eq!(s.total_records, 100);
    assert_eq!(rows(&f.read(&s).await.unwrap()), 100);
    f.stop().await;
}

#[tokio::test]
async fn plain_tcp_off_loopback_needs_an_explicit_flag() {
    let mesh = tempfile::tempdir().unwrap();
    let mut config = meshgate::GatewayConfig::for_mesh(mesh.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    let e = meshgate::Gateway::bind(config, Default::default()).await.unwrap_err();
    assert!(e.to_string().contains("--allow-plaintext"), "{e}");
}

#[tokio::test]
async fn contracts_are_checked_against_the_data_and_standard_extras_are_accepted() {
    let mesh = tempfile::tempdir().unwrap();
    meshgate::sample::write(mesh.path(), 0.02).unwrap();
    let contract = mesh.path().join("logistics/warehouses/v1.odcs.yaml");
    let text = std::fs::read_to_string(&contract).unwrap();
    // Standard fields meshgate does not use are fine.
    let extended = format!(
        "{text}servers:\n  - server: local\n    type: local\n    path: ./data\n    format: parquet\nsupport:\n  - channel: '#logistics'\n"
    );
    std::fs::write(&contract, extended).unwrap();
    // A column the data does not have, and a type the data does not hold.
    let shipments = mesh.path().join("logistics/shipments/v1.odcs.yaml");
    let bad = std::fs::read_to_string(&shipments)
        .unwrap()
        .replace(
            "      - name: carrier\n        logicalType: string",
            "      - name: carrier\n        logicalType: integer",
        )
        .replace("      - name: status\n", "      - name: state\n");
    std::fs::write(&shipments, bad).unwrap();
    let config = meshgate::GatewayConfig::for_mesh(mesh.path());
    let mut f = Fixture::start(mesh, config, Default::default()).await;
    let info = f.info(&["logistics", "warehouses"]).await.unwrap();
    assert_eq!(rows(&f.read(&info).await.unwrap()), 24);
    let d = f.action("describe", "logistics/shipments").await.unwrap();
    let problems: Vec<String> = d["problems"].as_array().unwrap().iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("`carrier` is declared `integer` but the data holds Utf8"), "{}", problems[0]);
    assert!(problems[1].contains("column `state` is not in the data"), "{}", problems[1]);
    assert!(problems[1].contains("schema[0].properties[7]"), "{}", problems[1]);
    f.stop().await;
}
