//! Identities cannot be stretched, merged or spoofed: renewal, session limits, lifetimes, login
//! floods and refusal messages, tried from the attacker's side.

mod common;

use arrow_flight::FlightClient;
use base64::Engine;
use common::secure::*;
use common::status;
use futures::TryStreamExt;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tonic::Code;

/// Renews `token` through Handshake; returns the new token.
async fn renew(s: &Secure, token: &str) -> Result<String, tonic::Status> {
    let mut c = s.client(Some(token)).await;
    c.handshake(bytes::Bytes::new()).await.map(|b| String::from_utf8(b.to_vec()).unwrap()).map_err(status)
}

fn payload(token: &str) -> Value {
    let body = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
}

#[tokio::test]
async fn a_renewed_token_never_outlives_the_original_authentication() {
    let s = Secure::start().await;
    // A 60-second token from an identity provider, renewed again and again.
    let short = sign(Algorithm::RS256, "rsa.key", with(claims("https://rsa.idp.test"), "exp", json!(now() + 60)), None);
    let mut token = short.clone();
    for _ in 0..3 {
        token = renew(&s, &token).await.unwrap();
        let p = payload(&token);
        assert!(p["exp"].as_u64().unwrap() <= now() + 60, "renewal stretched the session: {p}");
        assert_eq!(p["meshgate_orig_iss"], "https://rsa.idp.test", "the original issuer travels on");
    }
    // A gateway session from a password: renewals keep its auth_time.
    let alice = s.login("alice").await;
    let first = payload(&alice);
    let renewed = payload(&renew(&s, &alice).await.unwrap());
    assert_eq!(renewed["auth_time"], first["auth_time"]);
    assert!(renewed["exp"].as_u64() <= Some(first["auth_time"].as_u64().unwrap() + 12 * 3600));
    s.stop().await;
}

#[tokio::test]
async fn an_identity_providers_alice_is_not_the_gateways_alice() {
    let s = Secure::start().await;
    // The gateway's own alice (a password user) gets a ticket.
    let alice = s.login("alice").await;
    let mut own = s.client(Some(&alice)).await;
    let info = own.get_flight_info(path("customers", "profiles")).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    // Another person called alice at an identity provider, renewed into a gateway token.
    let idp_alice =
        sign(Algorithm::RS256, "rsa.key", with(claims("https://rsa.idp.test"), "sub", json!("alice")), None);
    let renewed = renew(&s, &idp_alice).await.unwrap();
    let mut other = s.client(Some(&renewed)).await;
    let e = other.do_get(ticket).await.err().map(status).unwrap();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    s.stop().await;
}

#[tokio::test]
async fn a_removed_or_disabled_user_cannot_renew() {
    let s = Secure::start().await;
    let bob = s.login("bob").await;
    let users = s.dir.path().join("auth/users.yaml");
    let mut text = std::fs::read_to_string(&users).unwrap();
    let at = text.find("  bob:\n").expect("bob in the users file");
    text.insert_str(at + "  bob:\n".len(), "    disabled: true\n");
    std::fs::write(&users, text).unwrap();
    let e = renew(&s, &bob).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("log in again"), "{}", e.message());
    let mut c = s.client(None).await;
    let basic = base64::engine::general_purpose::STANDARD.encode("bob:bob-dev-password");
    c.add_header("authorization", &format!("Basic {basic}")).unwrap();
    assert_eq!(c.handshake(bytes::Bytes::new()).await.err().map(status).unwrap().code(), Code::Unauthenticated);
    s.stop().await;
}

#[tokio::test]
async fn tokens_valid_for_too_long_are_refused() {
    let s = Secure::start().await;
    let year = sign(
        Algorithm::RS256,
        "rsa.key",
        with(with(claims("https://rsa.idp.test"), "exp", json!(now() + 365 * 86400)), "iat", json!(now())),
        None,
    );
    let e = s.client(Some(&year)).await.list_flights("").await.err().map(status).unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("maximum"), "{}", e.message());
    s.stop().await;
}

#[tokio::test]
async fn refusals_do_not_tell_which_issuer_key_or_algorithm_is_trusted() {
    let s = Secure::start().await;
    let probes = [
        sign(Algorithm::RS256, "rsa.key", claims("https://unknown.idp.test"), None),
        sign(Algorithm::ES256, "ec.pk8.key", claims("https://jwks.idp.test"), Some("no-such-kid")),
        sign(Algorithm::HS256, "rsa.pub.pem", claims("https://rsa.idp.test"), None),
        sign(Algorithm::RS256, "rsa.key", with(claims("https://rsa.idp.test"), "aud", json!("elsewhere")), None),
    ];
    let mut messages = Vec::new();
    for token in &probes {
        let e = s.client(Some(token)).await.list_flights("").await.err().map(status).unwrap();
        assert_eq!(e.code(), Code::Unauthenticated);
        messages.push(e.message().to_string());
    }
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
    for hint in ["issuer", "kid", "key id", "RS256", "HS256", "algorithm", "aud"] {
        assert!(!messages[0].contains(hint), "`{hint}` in {}", messages[0]);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_login_flood_is_limited_and_does_not_slow_other_callers() {
    let s = Secure::start().await;
    let alice = s.login("alice").await;
    let basic = |user: &str, pw: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
    };
    let mut flood = Vec::new();
    for i in 0..40 {
        let mut c: FlightClient = s.client(None).await;
        c.add_header("authorization", &basic("carol", &format!("guess-{i}"))).unwrap();
        flood.push(tokio::spawn(
            async move { c.handshake(bytes::Bytes::new()).await.err().map(status).unwrap().code() },
        ));
    }
    // While the flood runs, alice keeps reading.
    let mut a = s.client(Some(&alice)).await;
    let listed: Vec<_> = a.list_flights("").await.unwrap().try_collect().await.unwrap();
    assert!(!listed.is_empty());
    let mut codes = Vec::new();
    for f in flood {
        codes.push(f.await.unwrap());
    }
    assert!(codes.iter().all(|c| matches!(c, Code::Unauthenticated | Code::ResourceExhausted)), "{codes:?}");
    assert!(codes.contains(&Code::ResourceExhausted), "failed logins are rate-limited: {codes:?}");
    // Even the right password is refused for carol until the window passes.
    let mut c = s.client(None).await;
    c.add_header("authorization", &basic("carol", "carol-dev-password")).unwrap();
    let e = c.handshake(bytes::Bytes::new()).await.err().map(status).unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("wait"), "{}", e.message());
    s.stop().await;
}
