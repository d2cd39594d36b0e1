//! Requests that try to crash or exhaust the gateway, sent by an ordinary client.

mod common;

use arrow_flight::FlightDescriptor;
use arrow_flight::flight_service_client::FlightServiceClient;
use common::{Fixture, rows};
use tonic::Code;

const OPERATORS: &[&str] = &["OR", "AND", "||", "+", "-", "*", "/", "%", "=", "<>", "<", ">=", "LIKE"];

/// `amount > 0 OR <n terms joined by op>`: boolean for every operator.
fn chain(op: &str, n: usize) -> String {
    let term = match op {
        "OR" | "AND" => "amount > 0".to_string(),
        "||" | "LIKE" => "region".to_string(),
        "=" | "<>" | "<" | ">=" => "(amount > 0)".to_string(),
        _ => "amount".to_string(),
    };
    let body = vec![term; n].join(&format!(" {op} "));
    match op {
        "OR" | "AND" => body,
        "||" | "LIKE" => format!("({body}) IS NOT NULL"),
        "=" | "<>" | "<" | ">=" => format!("({body}) IS NOT NULL"),
        _ => format!("({body}) > 0"),
    }
}

#[tokio::test]
async fn huge_filters_are_refused_in_every_place_and_the_gateway_lives() {
    let mut f = Fixture::sample().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", f.gateway().local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = FlightServiceClient::new(channel).max_decoding_message_size(64 << 20);
    for op in OPERATORS {
        let q = serde_json::json!({"product": "sales/orders", "filter": chain(op, 10_000)}).to_string();
        let e = f.query(&q).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{op}: {e}");
        assert!(e.message().contains("the limit is"), "{op}: {}", e.message());
        assert!(e.message().len() < 512, "{op}: the error does not echo the filter");
        let d = FlightDescriptor::new_cmd(q);
        let e = raw.get_schema(d.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "GetSchema {op}: {e}");
        let e = raw.poll_flight_info(d).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "PollFlightInfo {op}: {e}");

        // Within the limit, every operator plans and runs: the limit trips, not the stack.
        let q = serde_json::json!({"product": "sales/orders", "filter": chain(op, 120), "limit": 5}).to_string();
        let read = match f.query(&q).await {
            Ok(info) => f.read(&info).await.map(|b| rows(&b)),
            Err(e) => Err(e),
        };
        match read {
            Ok(n) => assert!(n <= 5),
            // `a LIKE b LIKE c` has no type: refused by the planner, as a client error.
            Err(e) if *op == "LIKE" => assert_eq!(e.code(), Code::InvalidArgument, "{e}"),
            Err(e) => panic!("{op} at 120 terms: {e}"),
        }
    }
    let nested = format!("{}amount > 0{}", "(".repeat(5_000), ")".repeat(5_000));
    let e = f.query(&serde_json::json!({"product": "sales/orders", "filter": nested}).to_string()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let nots = "NOT ".repeat(10_000) + "amount > 0";
    let e = f.query(&serde_json::json!({"product": "sales/orders", "filter": nots}).to_string()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Still serving.
    let info = f.info(&["logistics", "warehouses"]).await.unwrap();
    assert_eq!(rows(&f.read(&info).await.unwrap()), 24);
    f.stop().await;
}

/// A FlightDescriptor whose `path` strings may hold any bytes (same tags as the real message).
#[derive(Clone, PartialEq, prost::Message)]
struct RawDescriptor {
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(bytes = "vec", repeated, tag = "3")]
    path: Vec<Vec<u8>>,
}

/// An Action whose `type` string may hold any bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawAction {
    #[prost(bytes = "vec", tag = "1")]
    r#type: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    body: Vec<u8>,
}

/// Any bytes at all as a message.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(bytes = "vec", tag = "1")]
    junk: Vec<u8>,
}

async fn raw_call<M: prost::Message + Default + Send + Sync + 'static, R: prost::Message + Default + Send + 'static>(
    f: &Fixture,
    path: &'static str,
    message: M,
) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", f.gateway().local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<M, R>::default();
    grpc.unary(tonic::Request::new(message), http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(|_| ())
        .unwrap_err()
}

#[tokio::test]
async fn client_mistakes_are_client_errors() {
    let mut f = Fixture::sample().await;
    let bad_path = RawDescriptor { r#type: 1, path: vec![b"sales".to_vec(), vec![0xff, 0xfe, b'o']] };
    let s = raw_call::<_, arrow_flight::FlightInfo>(&f, "/arrow.flight.protocol.FlightService/GetFlightInfo", bad_path)
        .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");
    assert!(s.message().contains("UTF-8"), "{}", s.message());
    let bad_action = RawAction { r#type: vec![0xc3, 0x28], body: vec![] };
    let s = raw_call::<_, arrow_flight::Result>(&f, "/arrow.flight.protocol.FlightService/DoAction", bad_action).await;
    assert!(matches!(s.code(), Code::InvalidArgument), "{s}");
    let junk = Garbage { junk: vec![0xff; 64] };
    let s =
        raw_call::<_, arrow_flight::FlightInfo>(&f, "/arrow.flight.protocol.FlightService/GetFlightInfo", junk).await;
    // Field 1 of a descriptor is an enum: 64 bytes of 0xff there do not decode.
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");

    // A 10 MB name comes back as a short error.
    let huge = "x".repeat(10 << 20);
    let e = f.info(&["sales", &huge]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() < 1024, "{} bytes", e.message().len());
    let e = f.query(&serde_json::json!({"product": format!("sales/{huge}/x/y")}).to_string()).await.unwrap_err();
    assert!(e.message().len() < 1024, "{} bytes", e.message().len());
    let e = f.query(&serde_json::json!({"product": "sales/orders", "columns": [huge]}).to_string()).await.unwrap_err();
    assert!(e.message().len() < 2048, "{} bytes", e.message().len());

    // Functions that describe the server are not available in filters.
    let e = f.query(r#"{"product": "sales/orders", "filter": "version() LIKE '%'"}"#).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("describe the server"), "{}", e.message());
    f.stop().await;
}

#[tokio::test]
async fn functions_that_allocate_by_argument_stay_inside_the_memory_limit() {
    let mut f = Fixture::sample_with(|c| c.memory_limit_mb = 64).await;
    for filter in [
        "length(repeat('x', 300000000)) > 0",
        "length(lpad(region, 2000000000)) > 0",
        "length(repeat(region, 20000000)) > 0",
        "array_length(range(0, 500000000)) > 0",
    ] {
        let q = serde_json::json!({"product": "sales/orders", "filter": filter}).to_string();
        let outcome = match f.query(&q).await {
            Ok(info) => f.read(&info).await.map(|_| ()),
            Err(e) => Err(e),
        };
        let e = outcome.expect_err(filter);
        assert_eq!(e.code(), Code::ResourceExhausted, "{filter}: {e}");
        assert!(e.message().contains("memory limit of 64 MiB"), "{filter}: {}", e.message());
    }
    let info = f.info(&["logistics", "warehouses"]).await.unwrap();
    assert_eq!(rows(&f.read(&info).await.unwrap()), 24);
    f.stop().await;
}

/// A domain team's product whose binding points at the gateway's own files.
fn write_thief(mesh: &std::path::Path, name: &str, location: &str) {
    common::write(
        &mesh.join(format!("sales/{name}/product.odps.yaml")),
        &format!(
            "apiVersion: v1.0.0\nkind: DataProduct\nid: {name}\nstatus: active\noutputPorts:\n  - name: v1\n    version: 1.0.0\n    contractId: {name}1\n"
        ),
    );
    common::write(
        &mesh.join(format!("sales/{name}/v1.odcs.yaml")),
        &format!(
            "apiVersion: v3.1.0\nkind: DataContract\nid: {name}1\nversion: 1.0.0\nstatus: active\nschema:\n  - name: t\n    properties:\n      - name: column_1\n        logicalType: string\ncustomProperties:\n  - property: meshgate.binding\n    value: {{adapter: files, location: '{location}', format: csv, csv: {{hasHeader: false}}, fileExtension: ''}}\n"
        ),
    );
}

#[tokio::test]
async fn bindings_read_only_inside_their_product_folder_and_the_storage_roots() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("users.yaml"), "alice: secret-hash\n").unwrap();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("lines.csv"), "a\nb\n").unwrap();
    let mesh = tempfile::tempdir().unwrap();
    meshgate::sample::write(mesh.path(), 0.02).unwrap();
    let users = secrets.path().join("users.yaml");
    write_thief(mesh.path(), "users", users.to_str().unwrap());
    write_thief(mesh.path(), "users_url", &format!("file://{}", users.display()));
    write_thief(mesh.path(), "shared", shared.path().join("lines.csv").to_str().unwrap());
    let mut config = meshgate::GatewayConfig::for_mesh(mesh.path());
    config.storage_roots = vec![shared.path().to_path_buf()];
    let mut f = Fixture::start(mesh, config, Default::default()).await;
    for stolen in ["users", "users_url"] {
        let e = f.info(&["sales", stolen]).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{stolen}: {e}");
        assert!(e.message().contains("--storage-root"), "{stolen}: {}", e.message());
        assert!(!e.message().contains("secret-hash"));
    }
    let info = f.info(&["sales", "shared"]).await.unwrap();
    assert_eq!(rows(&f.read(&info).await.unwrap()), 2, "a folder the operator allowed is readable");
    f.stop().await;
}

/// Runs the real binary with `args` in `cwd`; returns its exit status and what it logged, or
/// panics if it starts listening.
fn refused_start(cwd: &std::path::Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(args)
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("listening") {
            child.kill().unwrap();
            panic!("the gateway started: {log}{line}");
        }
        log.push_str(&line);
        log.push('\n');
    }
    (child.wait().unwrap(), log)
}

#[test]
fn the_sample_and_its_development_users_are_never_served_off_loopback() {
    let cwd = tempfile::tempdir().unwrap();
    let (status, log) = refused_start(cwd.path(), &["serve", "--listen", "0.0.0.0:0", "--allow-plaintext"]);
    assert!(!status.success());
    assert!(log.contains("--mesh DIR --auth FILE"), "{log}");
    assert!(!cwd.path().join(".meshgate").exists(), "no development users were written");
    let (status, log) = refused_start(cwd.path(), &["serve", "--listen", "127.0.0.1:0", "--mesh", "/mesh-not-mounted"]);
    assert!(!status.success());
    assert!(log.contains("mount your mesh"), "{log}");
}

/// Reads past `--max-concurrent-reads` are refused with a message saying so, while the reads
/// that hold the slots stay open; planning calls of other callers are still answered.
#[tokio::test]
async fn a_read_past_the_limit_is_refused_and_planning_still_answers() {
    let mut f = Fixture::sample_with(|c| c.max_concurrent_reads = 1).await;
    let info = f.info(&["sales", "orders"]).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    // The slot is taken before the response starts: this stream holds it, unread.
    let held = f.client.do_get(ticket.clone()).await.unwrap();
    let e = f.get(ticket.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("limit of 1 concurrent reads"), "{}", e.message());
    let other = f.info(&["logistics", "warehouses"]).await.unwrap();
    drop(held);
    // Once the held stream is gone its slot is free again; the server learns of the reset
    // asynchronously, so the next read may still meet the limit: retry on exactly that code.
    let mut attempts = 0;
    let batches = loop {
        match f.read(&other).await {
            Ok(b) => break b,
            Err(e) if e.code() == Code::ResourceExhausted && attempts < 1000 => {
                attempts += 1;
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(rows(&batches), 24);
    f.stop().await;
}
