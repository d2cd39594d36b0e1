//! Identity, governance and audit, tested from the attacker's side through a real FlightClient.

mod common;

use common::secure::*;

use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow_flight::{Action, Ticket};
use base64::Engine;
use common::{rows, status};
use futures::TryStreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use meshgate::{Gateway, GatewayConfig};
use serde_json::{Value, json};
use tonic::Code;

#[tokio::test]
async fn without_valid_credentials_nothing_is_served_and_every_failure_is_audited() {
    let s = Secure::start().await;
    let mut anon = s.client(None).await;
    assert_eq!(anon.list_flights("").await.err().map(status).unwrap().code(), Code::Unauthenticated);
    assert_eq!(
        anon.get_flight_info(path("sales", "orders")).await.err().map(status).unwrap().code(),
        Code::Unauthenticated
    );
    assert_eq!(anon.get_schema(path("sales", "orders")).await.err().map(status).unwrap().code(), Code::Unauthenticated);
    assert_eq!(anon.do_get(Ticket::new("x")).await.err().map(status).unwrap().code(), Code::Unauthenticated);
    assert_eq!(anon.list_actions().await.err().map(status).unwrap().code(), Code::Unauthenticated);
    assert_eq!(
        anon.do_action(Action::new("describe", "sales/orders")).await.err().map(status).unwrap().code(),
        Code::Unauthenticated
    );

    let rsa_public = std::fs::read(format!("{KEYS}/rsa.pub.pem")).unwrap();
    let none_token = {
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims("https://rsa.idp.test")))
    };
    let good = sign(Algorithm::RS256, "rsa.key", claims("https://rsa.idp.test"), None);
    let tampered = {
        let (head, sig) = good.rsplit_once('.').unwrap();
        let mut sig: Vec<char> = sig.chars().collect();
        sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
        format!("{head}.{}", sig.into_iter().collect::<String>())
    };
    let forged = [
        ("garbage", "not-a-jwt".to_string()),
        ("alg=none", none_token),
        (
            "HS256 with the RSA public key as secret",
            encode(
                &Header::new(Algorithm::HS256),
                &claims("https://rsa.idp.test"),
                &EncodingKey::from_secret(&rsa_public),
            )
            .unwrap(),
        ),
        ("untrusted issuer", sign(Algorithm::RS256, "rsa.key", claims("https://evil.test"), None)),
        (
            "wrong audience",
            sign(Algorithm::RS256, "rsa.key", with(claims("https://rsa.idp.test"), "aud", json!("someone-else")), None),
        ),
        (
            "expired",
            sign(Algorithm::RS256, "rsa.key", with(claims("https://rsa.idp.test"), "exp", json!(now() - 120)), None),
        ),
        (
            "nbf in the future",
            sign(Algorithm::RS256, "rsa.key", with(claims("https://rsa.idp.test"), "nbf", json!(now() + 300)), None),
        ),
        (
            "missing sub",
            sign(Algorithm::RS256, "rsa.key", with(claims("https://rsa.idp.test"), "sub", Value::Null), None),
        ),
        ("unknown kid", sign(Algorithm::ES256, "ec.pk8.key", claims("https://jwks.idp.test"), Some("k2"))),
        ("tampered signature", tampered),
        ("signed by the wrong key", sign(Algorithm::EdDSA, "ed.key", claims("https://rsa.idp.test"), None)),
    ];
    for (what, token) in &forged {
        let mut c = s.client(Some(token)).await;
        let e = c.list_flights("").await.err().map(status).unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e}");
        let e = c.get_flight_info(path("sales", "orders")).await.err().map(status).unwrap();
        assert_eq!(e.code(), Code::Unauthenticated, "{what}");
    }
    let log = s.audit_log().await;
    // Every failure is recorded, up to the per-source limit a minute, and the rest are counted:
    // failed logins can never fill the queue that reads are audited through.
    let failures = log.lines().filter(|l| l.contains("\"authentication_failure\"")).count();
    let attempts = 6 + 2 * forged.len();
    let limit = meshgate::audit::AUTH_FAILURES_PER_SOURCE as usize;
    assert_eq!(failures, attempts.min(limit));
    let suppressed = s.gateway().audit().unwrap().auth_failures_suppressed() as usize;
    assert_eq!(failures + suppressed, attempts);
    for (_, token) in &forged {
        assert!(!log.contains(token.as_str()), "a token reached the audit log");
    }
    s.stop().await;
}

#[tokio::test]
async fn tokens_from_every_trusted_issuer_and_handshake_work() {
    let s = Secure::start().await;
    for token in [
        sign(Algorithm::RS256, "rsa.key", claims("https://rsa.idp.test"), None),
        sign(Algorithm::EdDSA, "ed.key", claims("https://ed.idp.test"), None),
        sign(
            Algorithm::ES256,
            "ec.pk8.key",
            with(with(claims("https://jwks.idp.test"), "roles", Value::Null), "groups_of_user", json!("analyst")),
            Some("k1"),
        ),
        s.login("alice").await,
    ] {
        let mut c = s.client(Some(&token)).await;
        let listed: Vec<_> = c.list_flights("").await.unwrap().try_collect().await.unwrap();
        assert!(listed.len() >= 3, "{listed:?}");
    }
    let mut c = s.client(None).await;
    c.add_header(
        "authorization",
        &format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:wrong-password")),
    )
    .unwrap();
    assert_eq!(c.handshake(bytes::Bytes::new()).await.err().map(status).unwrap().code(), Code::Unauthenticated);
    s.stop().await;
}

#[tokio::test]
async fn a_ticket_is_bound_to_its_principal() {
    let s = Secure::start().await;
    let (alice, bob) = (s.login("alice").await, s.login("bob").await);
    let info = s.client(Some(&alice)).await.get_flight_info(path("logistics", "warehouses")).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let e = s.client(Some(&bob)).await.do_get(ticket.clone()).await.err().map(status).unwrap();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let mut flipped = ticket.ticket.to_vec();
    flipped[8] ^= 0x04;
    let e = s.client(Some(&alice)).await.do_get(Ticket::new(flipped)).await.err().map(status).unwrap();
    assert!(matches!(e.code(), Code::Unauthenticated | Code::InvalidArgument), "{e}");
    let batches: Vec<RecordBatch> =
        s.client(Some(&alice)).await.do_get(ticket).await.unwrap().try_collect().await.unwrap();
    assert_eq!(rows(&batches), 24);
    s.stop().await;
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).unwrap();
            let a = arrow::compute::cast(a, &arrow::datatypes::DataType::Utf8).unwrap();
            a.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn masked_columns_never_reveal_clear_values() {
    let s = Secure::start().await;
    let (alice, carol) = (s.login("alice").await, s.login("carol").await);
    let clear = read_all(&mut s.client(Some(&carol)).await, path("customers", "profiles")).await.unwrap();
    let emails = strings(&clear, "email");
    assert!(emails[0].as_deref().unwrap().contains('@'), "a privacy officer sees clear values");
    let mut a = s.client(Some(&alice)).await;
    let masked = read_all(&mut a, path("customers", "profiles")).await.unwrap();
    assert_eq!(rows(&masked), rows(&clear));
    assert!(strings(&masked, "email").iter().all(|e| e.as_deref() == Some("***")));
    assert!(strings(&masked, "full_name").iter().all(|e| e.as_deref() == Some("***")));
    assert_eq!(masked[0].column_by_name("birth_date").unwrap().null_count(), masked[0].num_rows());
    assert_eq!(
        masked[0].schema().field_with_name("birth_date").unwrap().data_type(),
        clear[0].schema().field_with_name("birth_date").unwrap().data_type(),
        "masks keep the type"
    );
    let known = emails[0].clone().unwrap();
    for filter in [
        format!("email = '{known}'"),
        "email LIKE '%@%'".into(),
        "substr(email, 1, 1) = 'a'".into(),
        "length(full_name) > 3".into(),
    ] {
        let got = read_all(&mut a, query(json!({"product": "customers/profiles", "filter": filter}))).await.unwrap();
        assert_eq!(rows(&got), 0, "filter `{filter}` saw clear values");
    }
    let got = read_all(
        &mut a,
        query(json!({"product": "customers/profiles", "filter": "email = '***'", "columns": ["customer_id", "email"]})),
    )
    .await
    .unwrap();
    assert_eq!(rows(&got), rows(&clear));
    s.stop().await;
}

#[tokio::test]
async fn row_filters_hold_with_limit_projection_and_caller_filters() {
    let s = Secure::start().await;
    let (alice, bob, carol) = (s.login("alice").await, s.login("bob").await, s.login("carol").await);
    let all =
        read_all(&mut s.client(Some(&carol)).await, query(json!({"product": "sales/orders", "columns": ["region"]})))
            .await
            .unwrap();
    let emea = strings(&all, "region").iter().filter(|r| r.as_deref() == Some("EMEA")).count();
    assert!(emea > 0 && emea < rows(&all));
    let mut a = s.client(Some(&alice)).await;
    let got = read_all(&mut a, path("sales", "orders")).await.unwrap();
    assert_eq!(rows(&got), emea);
    assert!(strings(&got, "region").iter().all(|r| r.as_deref() == Some("EMEA")));
    for q in [
        json!({"product": "sales/orders", "limit": 5}),
        json!({"product": "sales/orders", "columns": ["order_id"], "limit": 100000}),
        json!({"product": "sales/orders", "filter": "region <> 'EMEA'"}),
        json!({"product": "sales/orders", "filter": "region = 'AMER' OR true"}),
    ] {
        let got = read_all(&mut a, query(q.clone())).await.unwrap();
        assert!(rows(&got) <= emea, "{q}");
        if got.first().and_then(|b| b.column_by_name("region")).is_some() {
            assert!(strings(&got, "region").iter().all(|r| r.as_deref() == Some("EMEA")), "{q}");
        }
    }
    // An expression that would fail on any hidden row runs only on visible rows.
    let trap = json!({"product": "sales/orders", "filter": "CAST(CASE WHEN region <> 'EMEA' THEN 'boom' ELSE '1' END AS INT) = 1"});
    assert_eq!(rows(&read_all(&mut a, query(trap)).await.unwrap()), emea);
    let got = read_all(&mut s.client(Some(&bob)).await, path("sales", "orders")).await.unwrap();
    assert!(strings(&got, "region").iter().all(|r| r.as_deref() == Some("AMER")));
    s.stop().await;
}

#[tokio::test]
async fn undiscoverable_products_look_exactly_like_missing_ones() {
    let s = Secure::start().await;
    let (alice, carol, pat) = (s.login("alice").await, s.login("carol").await, s.login("pat").await);
    let mut a = s.client(Some(&alice)).await;
    let hidden = a.get_flight_info(path("sales", "daily_revenue")).await.err().map(status).unwrap();
    let missing = a.get_flight_info(path("sales", "daily_revenu")).await.err().map(status).unwrap();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(hidden.message().replace("daily_revenue", "X"), missing.message().replace("daily_revenu", "X"));
    assert!(!missing.message().contains("daily_revenue"), "the list of products leaks: {}", missing.message());
    let listed: Vec<_> = a.list_flights("").await.unwrap().try_collect().await.unwrap();
    assert!(listed.iter().all(|i| i.flight_descriptor.as_ref().unwrap().path[1] != "daily_revenue"));
    let e = a.do_action(Action::new("describe", "sales/daily_revenue")).await.err().map(status).unwrap();
    assert_eq!(e.code(), Code::NotFound);
    // carol, who holds the clearance, reads every row of it (the sample is deterministic: at
    // scale 0.02 it has 2,007 day-and-region rows).
    let revenue = read_all(&mut s.client(Some(&carol)).await, path("sales", "daily_revenue")).await.unwrap();
    assert_eq!(rows(&revenue), 2007);
    // A domain policy narrows: partners may discover sales/orders but not read it.
    let e = s.client(Some(&pat)).await.get_flight_info(path("sales", "orders")).await.err().map(status).unwrap();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    // Only admins reload.
    let e = a.do_action(Action::new("reload", "")).await.err().map(status).unwrap();
    assert_eq!(e.code(), Code::PermissionDenied);
    let log = s.audit_log().await;
    assert!(
        log.lines().any(|l| l.contains("\"denied\"") && l.contains("sales-partners-see-no-finance-products")),
        "denials name the deciding policy"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_audit_chain_verifies_and_any_edit_breaks_it() {
    let s = Secure::start().await;
    let alice = s.login("alice").await;
    let mut a = s.client(Some(&alice)).await;
    let got = read_all(&mut a, path("customers", "profiles")).await.unwrap();
    let _ = s.client(None).await.list_flights("").await;
    let log = s.audit_log().await;
    let read: Value =
        serde_json::from_str(log.lines().find(|l| l.contains("\"DoGet\"") && l.contains("\"kind\":\"read\"")).unwrap())
            .unwrap();
    assert_eq!(read["outcome"]["status"], "OK");
    assert_eq!(read["outcome"]["rows"], rows(&got) as u64);
    assert_eq!(read["actor"]["sub"], "alice");
    assert_eq!(read["resource"]["contract_version"], "1.0.0");
    assert!(read["decision"]["masks"].as_array().unwrap().iter().any(|m| m == "email: redact"));
    assert!(!log.contains("@example.com"), "an unmasked value reached the audit log");
    let dir = s.stop().await;
    let log_dir = dir.path().join("audit");
    verify(&log_dir, None);
    let [segment] = &meshgate::audit::segments::list(&log_dir).unwrap()[..] else { panic!("one segment") };
    let text = std::fs::read_to_string(&segment.path).unwrap();
    let edited_dir = dir.path().join("edited");
    for (i, _) in text.lines().enumerate() {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines[i] = lines[i].replacen("\"rpc\":\"", "\"rpc\":\"x", 1);
        let _ = std::fs::remove_dir_all(&edited_dir);
        std::fs::create_dir_all(&edited_dir).unwrap();
        std::fs::write(edited_dir.join(segment.path.file_name().unwrap()), lines.join("\n") + "\n").unwrap();
        verify(&edited_dir, Some(i + 1));
    }
    // The last records removed, the chain itself intact: the checkpoint gives it away.
    let kept: String = text.split_inclusive('\n').take(text.lines().count() - 2).collect();
    std::fs::write(&segment.path, kept).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["audit", "verify"])
        .arg(&log_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut short"), "{out:?}");
}

fn verify(dir: &Path, broken_at: Option<usize>) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_meshgate")).args(["audit", "verify"]).arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    match broken_at {
        None => assert!(out.status.success(), "{text}"),
        Some(line) => {
            assert!(!out.status.success());
            assert!(text.contains(&format!("broken at line {line}:")), "expected line {line}: {text}");
        }
    }
}

#[tokio::test]
async fn the_audit_log_is_a_product_only_auditors_see() {
    let s = Secure::start().await;
    let (alice, erin) = (s.login("alice").await, s.login("erin").await);
    let _ = read_all(&mut s.client(Some(&alice)).await, path("logistics", "warehouses")).await.unwrap();
    s.gateway().audit().unwrap().flush().await;
    let mut a = s.client(Some(&alice)).await;
    let e = a.get_flight_info(path("_governance", "audit")).await.err().map(status).unwrap();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let mut auditor = s.client(Some(&erin)).await;
    let got = read_all(&mut auditor, query(json!({"product": "_governance/audit", "filter": "rpc = 'DoGet'"})))
        .await
        .unwrap();
    assert!(rows(&got) >= 1);
    // Rows come from the log's segments in parallel: look for alice's read in any order.
    let actors: Vec<String> = got
        .iter()
        .flat_map(|b| {
            let sub = b
                .column_by_name("actor")
                .unwrap()
                .as_struct()
                .column_by_name("sub")
                .unwrap()
                .as_string::<i32>()
                .clone();
            (0..sub.len()).map(move |i| sub.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert!(actors.iter().any(|a| a == "alice"), "{actors:?}");
    s.stop().await;
}

#[tokio::test]
async fn an_invalid_policy_is_refused_and_the_last_good_rules_stay() {
    let s = Secure::start().await;
    let (alice, olga) = (s.login("alice").await, s.login("olga").await);
    let policies = s.dir.path().join("mesh/_governance/policies");
    // Type error against the schema: products have no `salary` attribute.
    std::fs::write(
        policies.join("broken.cedar"),
        "permit(principal, action == Action::\"read\", resource) when { resource.salary > 1 };",
    )
    .unwrap();
    let report = {
        let mut c = s.client(Some(&olga)).await;
        let mut out: Vec<bytes::Bytes> =
            c.do_action(Action::new("reload", "")).await.unwrap().try_collect().await.unwrap();
        serde_json::from_slice::<Value>(&out.remove(0)).unwrap()
    };
    let problem = report["governance_problem"].as_str().unwrap();
    assert!(problem.contains("broken.cedar"), "{problem}");
    let mut a = s.client(Some(&alice)).await;
    let masked = read_all(&mut a, path("customers", "profiles")).await.unwrap();
    assert!(strings(&masked, "email").iter().all(|e| e.as_deref() == Some("***")), "the last good rules still mask");
    // A domain may not widen access.
    std::fs::remove_file(policies.join("broken.cedar")).unwrap();
    std::fs::write(s.dir.path().join("mesh/sales/_policies/widen.cedar"), "permit(principal, action, resource);")
        .unwrap();
    let mut c = s.client(Some(&olga)).await;
    let mut out: Vec<bytes::Bytes> = c.do_action(Action::new("reload", "")).await.unwrap().try_collect().await.unwrap();
    let report: Value = serde_json::from_slice(&out.remove(0)).unwrap();
    assert!(report["governance_problem"].as_str().unwrap().contains("may only narrow"), "{report}");
    s.stop().await;
}

/// Serves `body` over HTTPS on 127.0.0.1:0 with the development server certificate, counting
/// requests; returns the port and the counter.
async fn https_jwks(certs: &Path, body: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join("server.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
    let config =
        tokio_rustls::rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body, counter) = (acceptor.clone(), body.clone(), std::sync::Arc::clone(&counter));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, hits)
}

#[tokio::test]
async fn jwks_over_https_with_a_rate_limited_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../certs/make-dev-certs.sh"))
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let key = EncodingKey::from_ec_pem(&std::fs::read(format!("{KEYS}/ec.pk8.key")).unwrap()).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("https-k1".into());
    let (port, hits) =
        https_jwks(&certs, serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }).unwrap()).await;
    let mesh = dir.path().join("mesh");
    meshgate::sample::write(&mesh, 0.02).unwrap();
    std::fs::write(dir.path().join("gateway.secret"), "s".repeat(40)).unwrap();
    std::fs::write(
        dir.path().join("auth.yaml"),
        format!(
            "gateway: {{secret_file: gateway.secret}}\nissuers:\n  - issuer: https://idp.example\n    audiences: [meshgate]\n    algorithms: [ES256]\n    jwks_url: https://127.0.0.1:{port}/jwks.json\n    jwks_ca_file: certs/ca.pem\n"
        ),
    )
    .unwrap();
    let mut config = GatewayConfig::for_mesh(&mesh);
    config.insecure_no_auth = false;
    config.auth = Some(dir.path().join("auth.yaml"));
    config.audit_log = Some(dir.path().join("audit"));
    config.no_watch = true;
    let gateway = Gateway::bind(config, Default::default()).await.unwrap();
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "fetched once at start");
    let s = Secure { gateway: Some(gateway), dir };
    let good = sign(Algorithm::ES256, "ec.pk8.key", claims("https://idp.example"), Some("https-k1"));
    let listed: Vec<_> = s.client(Some(&good)).await.list_flights("").await.unwrap().try_collect().await.unwrap();
    assert!(!listed.is_empty());
    for kid in ["forged-1", "forged-2", "forged-3"] {
        let forged = sign(Algorithm::ES256, "ec.pk8.key", claims("https://idp.example"), Some(kid));
        let e = s.client(Some(&forged)).await.list_flights("").await.err().map(status).unwrap();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "unknown kids within the refresh interval cause no refetch"
    );
    s.stop().await;
}
