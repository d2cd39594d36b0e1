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
