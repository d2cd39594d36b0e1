//! Who is calling the HTTP port, and signing in and out.
//!
//! A request is authenticated by `authorization: Bearer <token>` (scripts), or by the session
//! cookie the sign-in sets: the same gateway token `Handshake` hands Flight clients, verified the
//! same way on every request, in an `HttpOnly`, `SameSite=Strict` cookie. Forms that change the
//! session (sign in, sign out) carry a CSRF token that must equal the `meshgate_csrf` cookie
//! (double submit); a cross-site `Origin` is refused outright.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use cookie::{Cookie, SameSite};
use serde::Deserialize;
use serde_json::json;

use super::{Error, HttpState, Result};
use crate::audit::Client;
use crate::auth::layer::{Credentials, credentials};
use crate::auth::{AuthMethod, Principal};

/// The session cookie (the gateway token).
pub(crate) const SESSION_COOKIE: &str = "meshgate_session";

/// The CSRF cookie (a random value the forms repeat).
pub(crate) const CSRF_COOKIE: &str = "meshgate_csrf";

/// The value of cookie `name`, if the request has it.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(|c| c.ok())
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// Where the request came from, for the audit log.
pub(crate) fn client(headers: &HeaderMap, peer: SocketAddr) -> Client {
    Client {
        address: Some(peer.to_string()),
        user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string),
        on_behalf_of: None,
    }
}

/// The caller: the anonymous principal when authentication is off; otherwise the bearer token
/// in `authorization`, or the session cookie's.
pub(crate) async fn principal(state: &HttpState, headers: &HeaderMap, peer: SocketAddr) -> Result<Principal> {
    let Some(auth) = &state.auth else { return Ok(Principal::anonymous()) };
    let token = match credentials(headers)? {
        Credentials::Bearer(t) => t.to_string(),
        Credentials::Basic(_) => {
            return Err(Error::Unauthenticated(
                "Basic credentials are only taken by POST /api/session: send the token it returns as `Bearer`".into(),
            ));
        }
        Credentials::None => cookie(headers, SESSION_COOKIE)
            .ok_or_else(|| Error::Unauthenticated("sign in first (POST /api/session, or the /login page)".into()))?,
    };
    match auth.verify_bearer(&token).await {
        Ok(p) => {
            let mut p = p.as_ref().clone();
            p.bearer = Some(token.into());
            Ok(p)
        }
        Err(e) => {
            state.core.auth_failure("HTTP", client(headers, peer), &e.to_string());
            Err(e.into())
        }
    }
}

/// Refuses a form posted from another site: its `Origin` (when sent) must be this host, and
/// its CSRF field must equal the CSRF cookie.
fn check_form(headers: &HeaderMap, csrf: &str) -> Result<()> {
    if let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        let origin = origin.to_str().unwrap_or_default();
        let host = host.to_str().unwrap_or_default();
        let same = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host);
        if !same {
            return Err(Error::Csrf);
        }
    }
    let expected = cookie(headers, CSRF_COOKIE).ok_or(Error::Csrf)?;
    let equal =
        expected.len() == csrf.len() && expected.bytes().zip(csrf.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if equal && !expected.is_empty() { Ok(()) } else { Err(Error::Csrf) }
}

/// A fresh CSRF value and the cookie that carries it.
pub(crate) fn new_csrf(state: &HttpState) -> (String, HeaderValue) {
    let value = hex::encode(rand::random::<[u8; 32]>());
    let c = Cookie::build((CSRF_COOKIE, value.clone()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.secure_cookies)
        .path("/")
        .build();
    (value, HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static("")))
}

fn session_cookie(state: &HttpState, token: &str, max_age: Option<i64>) -> Result<HeaderValue> {
    let mut c = Cookie::build((SESSION_COOKIE, token.to_string()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.secure_cookies)
        .path("/");
    if let Some(secs) = max_age {
        c = c.max_age(cookie::time::Duration::seconds(secs));
    }
    HeaderValue::from_str(&c.build().to_string()).map_err(|_| Error::BadRequest("the token cannot be a cookie".into()))
}

/// Checks `user`/`password` (or a pasted `token`) and returns the principal and the token to
/// keep. Sign-ins are recorded like Flight handshakes.
async fn sign_in(
    state: &HttpState,
    headers: &HeaderMap,
    peer: SocketAddr,
    with: SignIn,
) -> Result<(Principal, String)> {
    let Some(auth) = &state.auth else {
        return Err(Error::BadRequest("authentication is off on this gateway: there is nothing to sign in to".into()));
    };
    let who = client(headers, peer);
    let out = match with {
        SignIn::Password(user, password) => match auth.verify_basic(&user, &password, Some(peer.ip())).await {
            Ok(p) => auth.tokens().issue(&p, None).map(|t| (p, t)),
            Err(e) => Err(e),
        },
        SignIn::Token(t) => auth.verify_bearer(&t).await.map(|p| (p.as_ref().clone(), t)),
    };
    match out {
        Ok((p, token)) => {
            state.core.login(who, &p).await?;
            Ok((p, token))
        }
        Err(e) => {
            state.core.auth_failure("HTTP sign-in", who, &e.to_string());
            Err(e.into())
        }
    }
}

enum SignIn {
    Password(String, String),
    Token(String),
}

fn seconds_left(p: &Principal) -> Option<i64> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    (p.expires_at > 0).then(|| p.expires_at.saturating_sub(now) as i64)
}

fn me(p: &Principal) -> serde_json::Value {
    json!({
        "subject": p.subject,
        "issuer": p.issuer,
        "roles": p.roles,
        "domain": p.domain,
        "authenticated": p.method != AuthMethod::Anonymous,
        "expires_at": (p.expires_at > 0).then_some(p.expires_at),
    })
}

/// The JSON body `POST /api/session` takes instead of Basic credentials.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenBody {
    token: String,
}

/// `POST /api/session`: Basic credentials (or `{"token": ...}`) → the gateway token, also set
/// as the session cookie.
pub(crate) async fn api_login(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Option<Json<TokenBody>>,
) -> Result<Response> {
    let with = match (credentials(&headers)?, body) {
        (Credentials::Basic(b), _) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b)
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| Error::BadRequest("Basic credentials must be base64 of `user:password`".into()))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| Error::BadRequest("Basic credentials must be base64 of `user:password`".into()))?;
            SignIn::Password(user.to_string(), password.to_string())
        }
        (_, Some(Json(b))) => SignIn::Token(b.token),
        _ => return Err(Error::Unauthenticated("send Basic credentials, or a JSON body {\"token\": ...}".into())),
    };
    let (p, token) = sign_in(&state, &headers, peer, with).await?;
    let cookie = session_cookie(&state, &token, seconds_left(&p))?;
    let mut body = me(&p);
    body["token"] = json!(token);
    Ok(([(header::SET_COOKIE, cookie)], Json(body)).into_response())
}

/// `DELETE /api/session`: clears the session cookie.
pub(crate) async fn api_logout(State(state): State<Arc<HttpState>>) -> Result<Response> {
    Ok(([(header::SET_COOKIE, session_cookie(&state, "", Some(0))?)], StatusCode::NO_CONTENT).into_response())
}

/// `GET /api/session`: who the caller is.
pub(crate) async fn api_me(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>> {
    Ok(Json(me(&principal(&state, &headers, peer).await?)))
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

/// A local path to go back to after signing in (never another site).
pub(crate) fn local_next(next: &str) -> String {
    let safe = next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') && !next.contains("://");
    if safe { next.to_string() } else { "/".to_string() }
}

/// `POST /login`: signs in and goes back where the user was; a refusal shows the form again.
pub(crate) async fn page_login(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    if let Err(e) = check_form(&headers, &form.csrf) {
        return super::pages::login_form(&state, &form.next, Some(&e.to_string()), e.status());
    }
    let with = if form.token.trim().is_empty() {
        SignIn::Password(form.username.trim().to_string(), form.password)
    } else {
        SignIn::Token(form.token.trim().to_string())
    };
    match sign_in(&state, &headers, peer, with).await {
        Ok((p, token)) => match session_cookie(&state, &token, seconds_left(&p)) {
            Ok(c) => ([(header::SET_COOKIE, c)], Redirect::to(&local_next(&form.next))).into_response(),
            Err(e) => super::pages::login_form(&state, &form.next, Some(&e.to_string()), e.status()),
        },
        Err(e) => super::pages::login_form(&state, &form.next, Some(&e.to_string()), e.status()),
    }
}

/// The sign-out form.
#[derive(Debug, Deserialize)]
pub(crate) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: clears the session and shows the sign-in page.
pub(crate) async fn page_logout(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LogoutForm>,
) -> Result<Response> {
    check_form(&headers, &form.csrf)?;
    Ok(([(header::SET_COOKIE, session_cookie(&state, "", Some(0))?)], Redirect::to("/login")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forms_need_the_csrf_cookie_and_same_origin() {
        let ok = headers(&[("cookie", "a=b; meshgate_csrf=abc"), ("host", "gw:8816"), ("origin", "http://gw:8816")]);
        assert!(check_form(&ok, "abc").is_ok());
        assert!(matches!(check_form(&ok, "abd"), Err(Error::Csrf)));
        assert!(matches!(check_form(&ok, ""), Err(Error::Csrf)));
        let no_cookie = headers(&[("host", "gw:8816")]);
        assert!(matches!(check_form(&no_cookie, "abc"), Err(Error::Csrf)));
        let cross =
            headers(&[("cookie", "meshgate_csrf=abc"), ("host", "gw:8816"), ("origin", "https://evil.example")]);
        assert!(matches!(check_form(&cross, "abc"), Err(Error::Csrf)));
        // A sandboxed frame or a privacy redirect sends `Origin: null`: not this site either.
        let null = headers(&[("cookie", "meshgate_csrf=abc"), ("host", "gw:8816"), ("origin", "null")]);
        assert!(matches!(check_form(&null, "abc"), Err(Error::Csrf)));
    }

    #[test]
    fn sign_in_only_returns_to_local_pages() {
        assert_eq!(local_next("/products/sales/orders"), "/products/sales/orders");
        for evil in ["//evil.example/x", "https://evil.example", "/\\evil.example", "", "javascript:alert(1)"] {
            assert_eq!(local_next(evil), "/", "{evil}");
        }
    }

    #[test]
    fn cookies_are_read_by_name() {
        let h = headers(&[("cookie", "x=1; meshgate_session=tok.en.sig"), ("cookie", "meshgate_csrf=c")]);
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("tok.en.sig"));
        assert_eq!(cookie(&h, CSRF_COOKIE).as_deref(), Some("c"));
        assert_eq!(cookie(&h, "nope"), None);
    }
}
