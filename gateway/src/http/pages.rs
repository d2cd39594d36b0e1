//! The catalog's web pages, rendered on the server from the same documents as the JSON API.
//!
//! Templates live in `http/templates` and are compiled in; minijinja escapes every value put
//! into them (`.html` templates auto-escape). The pages need no script: the search is a form,
//! the usage chart an inline SVG.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::{Environment, context};
use serde_json::{Value, json};

use super::api::{self, AuditQuery, Search};
use super::session::{self, principal};
use super::{Error, HttpState};
use crate::auth::{AuthMethod, Principal};

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("products.html", include_str!("templates/products.html")),
    ("product.html", include_str!("templates/product.html")),
    ("login.html", include_str!("templates/login.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("error.html", include_str!("templates/error.html")),
];

const STYLE: &str = include_str!("templates/style.css");

/// The compiled templates.
pub(crate) struct Pages {
    env: Environment<'static>,
}

impl Pages {
    /// Compiles the bundled templates (a broken template is a build defect: tests render each).
    pub(crate) fn new() -> Self {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "a page template does not compile");
            }
        }
        Self { env }
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, String> {
        self.env.get_template(name).and_then(|t| t.render(ctx)).map_err(|e| {
            tracing::error!(template = name, error = %e, "a page could not be rendered");
            "the page could not be rendered".to_string()
        })
    }
}

fn page(state: &HttpState, name: &str, status: StatusCode, ctx: minijinja::Value) -> Response {
    match state.pages.render(name, ctx) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// The signed-in user shown in the header, with a CSRF value for the sign-out form.
fn who(state: &HttpState, p: &Principal) -> (Value, Option<axum::http::HeaderValue>) {
    if p.method == AuthMethod::Anonymous {
        return (Value::Null, None);
    }
    let (csrf, cookie) = session::new_csrf(state);
    (json!({"subject": p.subject, "roles": p.roles, "csrf": csrf}), Some(cookie))
}

fn with_cookie(mut r: Response, cookie: Option<axum::http::HeaderValue>) -> Response {
    if let Some(c) = cookie {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

/// An error as a page: unauthenticated callers are sent to sign in and come back.
fn error_page(state: &HttpState, e: Error, back: &str) -> Response {
    if matches!(e, Error::Unauthenticated(_) | Error::Auth(_)) {
        let next: String = url_encode(back);
        return Redirect::to(&format!("/login?next={next}")).into_response();
    }
    let status = e.status();
    page(
        state,
        "error.html",
        status,
        context! { title => "Error", message => e.to_string(), status => status.as_u16() },
    )
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /`: the searchable product list.
pub(crate) async fn products(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(q): Query<Search>,
) -> Response {
    let p = match principal(&state, &headers, peer).await {
        Ok(p) => p,
        Err(e) => return error_page(&state, e, &uri.to_string()),
    };
    let found = api::search(&state, &p, &q);
    // The filters offer what the caller can see, nothing more.
    let all = api::search(&state, &p, &Search::default());
    let collect = |key: &str| {
        let mut v: Vec<String> = all
            .iter()
            .flat_map(|s| match &s[key] {
                Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
                Value::String(x) => vec![x.clone()],
                _ => vec![],
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (user, cookie) = who(&state, &p);
    let ctx = context! {
        title => "Products",
        user => user,
        products => found,
        q => json!({"q": q.q, "tag": q.tag, "domain": q.domain, "owner": q.owner, "classification": q.classification}),
        domains => collect("domain"),
        tags => collect("tags"),
        classifications => collect("classifications"),
    };
    with_cookie(page(&state, "products.html", StatusCode::OK, ctx), cookie)
}

/// Bars of the usage chart: one per day, scaled to the busiest day.
fn chart(days: &Value) -> Value {
    let days = days.as_array().cloned().unwrap_or_default();
    let max = days.iter().filter_map(|d| d["reads"].as_i64()).max().unwrap_or(0).max(1);
    let (width, height) = (12, 80);
    let bars: Vec<Value> = days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let reads = d["reads"].as_i64().unwrap_or(0);
            let h = reads * height / max;
            json!({"x": i as i64 * (width + 2), "y": height - h, "w": width, "h": h, "day": d["day"], "reads": reads,
                   "rows": d["rows"], "consumers": d["consumers"]})
        })
        .collect();
    let total = |k: &str| days.iter().filter_map(|d| d[k].as_i64()).sum::<i64>();
    json!({
        "bars": bars,
        "width": days.len() as i64 * (width + 2),
        "height": height,
        "reads": total("reads"),
        "rows": total("rows"),
        "peak_consumers": days.iter().filter_map(|d| d["consumers"].as_i64()).max().unwrap_or(0),
    })
}

/// `GET /products/{domain}/{name}`: one product.
pub(crate) async fn product(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Path((domain, name)): Path<(String, String)>,
) -> Response {
    let out = async {
        let p = principal(&state, &headers, peer).await?;
        let d = api::product_document(&state, &p, &domain, &name).await?;
        Ok::<_, Error>((p, d))
    };
    let (p, d) = match out.await {
        Ok(x) => x,
        Err(e) => return error_page(&state, e, &uri.to_string()),
    };
    let usage = if d["usage"].is_null() { Value::Null } else { chart(&d["usage"]) };
    let sla = d["contract"]["odcs"]["slaProperties"].clone();
    let (user, cookie) = who(&state, &p);
    let ctx = context! {
        title => d["product"]["title"].as_str().filter(|t| !t.is_empty()).unwrap_or(&format!("{domain}/{name}")).to_string(),
        user => user,
        d => d,
        usage => usage,
        sla => sla,
    };
    with_cookie(page(&state, "product.html", StatusCode::OK, ctx), cookie)
}

/// `GET /audit`: the newest audit records, for callers who may read the audit log.
pub(crate) async fn audit(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let p = match principal(&state, &headers, peer).await {
        Ok(p) => p,
        Err(e) => return error_page(&state, e, &uri.to_string()),
    };
    let (user, cookie) = who(&state, &p);
    let (records, refused) = match api::audit_records(&state, p, &headers, peer, &q).await {
        Ok(r) => (r, None),
        Err(e @ (Error::Core(_) | Error::BadRequest(_))) => (Vec::new(), Some(e.to_string())),
        Err(e) => return error_page(&state, e, &uri.to_string()),
    };
    let ctx =
        context! { title => "Audit log", user => user, records => records, refused => refused, product => q.product };
    with_cookie(page(&state, "audit.html", StatusCode::OK, ctx), cookie)
}

/// The sign-in form, with `error` when an attempt was refused.
pub(crate) fn login_form(state: &HttpState, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let (csrf, cookie) = session::new_csrf(state);
    let ctx = context! { title => "Sign in", csrf => csrf, next => session::local_next(next), error => error, auth => state.auth.is_some() };
    with_cookie(page(state, "login.html", status, ctx), Some(cookie))
}

/// Where to go after signing in.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Next {
    #[serde(default)]
    next: String,
}

/// `GET /login`.
pub(crate) async fn login(State(state): State<Arc<HttpState>>, Query(n): Query<Next>) -> Response {
    login_form(&state, &n.next, None, StatusCode::OK)
}

/// `GET /static/style.css`.
pub(crate) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=3600")], STYLE)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn values_are_escaped() {
        let pages = Pages::new();
        let html = pages
            .render("error.html", context! { title => "x", message => "<script>alert(1)</script>", status => 400 })
            .unwrap();
        assert!(!html.contains("<script>alert(1)"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn the_chart_scales_to_the_busiest_day() {
        let c = chart(&json!([{"day": "2026-11-01", "reads": 2, "rows": 10, "consumers": 1},
                              {"day": "2026-11-02", "reads": 4, "rows": 30, "consumers": 2}]));
        assert_eq!(c["bars"][1]["h"], 80);
        assert_eq!(c["bars"][0]["h"], 40);
        assert_eq!(
            (c["reads"].as_i64(), c["rows"].as_i64(), c["peak_consumers"].as_i64()),
            (Some(6), Some(40), Some(2))
        );
    }

    #[test]
    fn sign_in_return_paths_are_encoded() {
        assert_eq!(url_encode("/products/sales/orders?x=1&y"), "/products/sales/orders%3Fx%3D1%26y");
    }
}
