//! What the audit log records: every action and login, and never a data value or an unbounded
//! field, whatever a caller sends.

mod common;

use arrow_flight::Action;
use common::secure::*;
use futures::TryStreamExt;
use serde_json::{Value, json};

fn records(log: &str) -> Vec<Value> {
    log.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn actions_and_logins_are_audited() {
    let s = Secure::start().await;
    let (olga, alice) = (s.login("olga").await, s.login("alice").await);
    let mut o = s.client(Some(&olga)).await;
    let _: Vec<_> = o.do_action(Action::new("reload", "")).await.unwrap().try_collect().await.unwrap();
    let mut a = s.client(Some(&alice)).await;
    assert!(a.do_action(Action::new("reload", "")).await.is_err());
    let _: Vec<_> = a.do_action(Action::new("describe", "sales/orders")).await.unwrap().try_collect().await.unwrap();
    let log = records(&s.audit_log().await);
    let find = |rpc: &str, sub: &str| {
        log.iter().find(|r| r["rpc"] == rpc && r["actor"]["sub"] == sub).unwrap_or_else(|| panic!("no {rpc} by {sub}"))
    };
    assert_eq!(find("DoAction/reload", "olga")["outcome"]["status"], "OK");
    assert_eq!(find("DoAction/reload", "alice")["outcome"]["status"], "PermissionDenied");
    assert_eq!(find("DoAction/describe", "alice")["outcome"]["status"], "OK");
    let logins: Vec<&Value> = log.iter().filter(|r| r["kind"] == "login").collect();
    assert!(logins.iter().any(|r| r["actor"]["sub"] == "alice"), "handshake successes are recorded");
    s.stop().await;
}

#[tokio::test]
async fn records_hold_no_values_and_no_unbounded_fields() {
    let s = Secure::start().await;
    let carol = s.login("carol").await;
    // carol reads emails in clear; a cast error quotes the value it could not cast.
    let mut c = s.client(Some(&carol)).await;
    let q = json!({"product": "customers/profiles", "filter": "CAST(email AS BIGINT) > 0"});
    assert!(read_all(&mut c, query(q)).await.is_err());
    // A huge user agent.
    let mut c = s.client(Some(&carol)).await;
    c.add_header("user-agent", &"x".repeat(10_000)).unwrap();
    let info = c.get_flight_info(path("sales", "orders")).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let _: Vec<_> = c.do_get(ticket).await.unwrap().try_collect().await.unwrap();
    let text = s.audit_log().await;
    assert!(!text.contains("@example.com"), "a data value reached the audit log");
    for line in text.lines() {
        assert!(line.len() < 8 * 1024, "a record of {} bytes", line.len());
    }
    assert!(
        records(&text)
            .iter()
            .any(|r| r["rpc"] == "DoGet" && r["client"]["user_agent"].as_str().is_some_and(|u| u.starts_with("xxxx"))),
        "the read with the long user agent is recorded"
    );
    s.stop().await;
}
