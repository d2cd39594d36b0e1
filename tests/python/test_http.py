"""The HTTP side port as operators, scripts and browsers meet it: probes, metrics, the catalog
API with discovery filtering, sign-in and its cookie, the audit log for auditors only."""

import base64
import json

import pyarrow.flight as flight
import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import Server

PRODUCT_WORDS = ["sales", "orders", "profiles", "customers", "logistics", "warehouses", "revenue"]


def basic(user, password=None):
    raw = f"{user}:{password or user + '-dev-password'}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def token(server, user):
    r = requests.post(f"{server.http}/api/session", headers=basic(user), timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": "Bearer " + r.json()["token"]}


def get(server, path, headers=None, **params):
    return requests.get(f"{server.http}{path}", headers=headers or {}, params=params, timeout=30, allow_redirects=False)


def addresses(server, headers, **params):
    r = get(server, "/api/products", headers, **params)
    assert r.status_code == 200, r.text
    return sorted(p["address"] for p in r.json()["products"])


def flight_read(server, user, *path):
    client = server.client()
    options = flight.FlightCallOptions(headers=[client.authenticate_basic_token(user, f"{user}-dev-password")])
    info = client.get_flight_info(flight.FlightDescriptor.for_path(*path), options)
    return client.do_get(info.endpoints[0].ticket, options).read_all()


def test_probes_answer_without_credentials_and_reveal_nothing(secure):
    for path, body in [("/healthz", "ok\n"), ("/readyz", "ready\n")]:
        r = get(secure, path)
        assert (r.status_code, r.text) == (200, body)
        assert not any(w in r.text for w in PRODUCT_WORDS)


def test_every_catalog_endpoint_refuses_callers_without_valid_credentials(secure):
    forged = {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJvbGdhIn0."}
    for path in ["/api/products", "/api/products/sales/orders", "/api/products/sales/orders/usage",
                 "/api/health", "/api/audit", "/api/session"]:
        for headers in [{}, forged, basic("alice"), {"Cookie": "meshgate_session=not-a-token"}]:
            r = get(secure, path, headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert "error" in r.json()
            assert not any(w in r.text for w in ["orders.parquet", "/tmp", "panicked"])
    # Pages send the browser to sign in, and back afterwards.
    r = get(secure, "/products/sales/orders")
    assert r.status_code in (302, 303, 307) and r.headers["location"] == "/login?next=/products/sales/orders"


def test_discovery_is_filtered_exactly_as_in_flight(secure):
    alice = addresses(secure, token(secure, "alice"))
    assert "sales/orders" in alice and "customers/profiles" in alice
    # Restricted (needs clearance) and governance products do not exist for her.
    assert "sales/daily_revenue" not in alice and "_governance/audit" not in alice
    assert "sales/daily_revenue" in addresses(secure, token(secure, "carol"))
    assert "_governance/audit" in addresses(secure, token(secure, "erin"))
    # Flight lists the same products for her.
    client = secure.client()
    options = flight.FlightCallOptions(headers=[client.authenticate_basic_token("alice", "alice-dev-password")])
    listed = sorted({"/".join(p.decode() for p in i.descriptor.path[:2]) for i in client.list_flights(options=options)})
    assert listed == alice
    # A hidden product answers exactly like one that does not exist.
    hidden = get(secure, "/api/products/sales/daily_revenue", token(secure, "alice"))
    missing = get(secure, "/api/products/sales/no_such_product", token(secure, "alice"))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"].replace("daily_revenue", "X") == missing.json()["error"].replace("no_such_product", "X")


def test_search_by_text_tag_domain_owner_and_classification(secure):
    h = token(secure, "carol")
    found = get(secure, "/api/products", h, q="ORDERS").json()["products"]
    assert "sales/orders" in [p["address"] for p in found] and len(found) < len(addresses(secure, h))
    for p in found:
        assert "orders" in json.dumps([p["address"], p["title"], p["description"], p["tags"]]).lower()
    assert addresses(secure, h, domain="logistics") == ["logistics/shipments", "logistics/warehouses"]
    assert addresses(secure, h, classification="pii") == ["customers/profiles"]
    assert "sales/daily_revenue" in addresses(secure, h, tag="finance")
    assert addresses(secure, h, q="no such words anywhere") == []
    owners = {p["owner"] for p in get(secure, "/api/products", h).json()["products"] if p["owner"]}
    some = sorted(owners)[0]
    assert all(p["owner"] == some for p in get(secure, "/api/products", h, owner=some).json()["products"])


def test_a_product_shows_its_contract_with_the_callers_masks(secure):
    columns = lambda who: {c["name"]: c for c in get(secure, "/api/products/customers/profiles", token(secure, who)).json()["contract"]["columns"]}
    alice, carol = columns("alice"), columns("carol")
    assert alice["email"]["classification"] == "pii" and alice["email"]["masked"] == "redact"
    assert carol["email"]["classification"] == "pii" and carol["email"]["masked"] is None
    doc = get(secure, "/api/products/sales/orders", token(secure, "alice")).json()
    assert doc["contract"]["row_filtered"] is True and doc["contract"]["readable"] is True
    assert doc["health"]["ports"][0]["health"]["status"] == "ok"
    assert "for_path(\"sales\", \"orders\")" in doc["snippets"]["pyarrow"]
    assert doc["snippets"]["sql"] == "SELECT * FROM mesh.sales.orders LIMIT 1000;"
    # Operators' settings (storage locations) are not published.
    assert "meshgate.binding" not in json.dumps(doc)


def test_usage_counts_reads_and_consumers_from_the_audit_log(tmp_path):
    s = Server(None, cwd=tmp_path, secure=True)
    try:
        rows = flight_read(s, "alice", "logistics", "warehouses").num_rows
        flight_read(s, "alice", "logistics", "warehouses")
        flight_read(s, "bob", "logistics", "warehouses")
        days = get(s, "/api/products/logistics/warehouses/usage", token(s, "alice"), days=7).json()["days"]
        assert len(days) == 7
        today = days[-1]
        assert (today["reads"], today["rows"], today["consumers"]) == (3, 3 * rows, 2)
        assert all(d["reads"] == 0 for d in days[:-1])
        # Invisible products have no usage either.
        assert get(s, "/api/products/sales/daily_revenue/usage", token(s, "alice")).status_code == 404
    finally:
        s.stop()


def test_the_audit_log_is_browsable_only_by_those_who_may_read_it(secure):
    flight_read(secure, "alice", "logistics", "warehouses")
    # As over Flight SQL, a table she may not discover does not exist for her.
    refused = get(secure, "/api/audit", token(secure, "alice"))
    assert refused.status_code in (400, 403, 404) and "not found" in refused.json()["error"], refused.text
    records = get(secure, "/api/audit", token(secure, "erin"), limit=500, product="logistics/warehouses").json()["records"]
    assert any(r["subject"] == "alice" and r["kind"] == "read" for r in records)
    assert all(r["domain"] == "logistics" and r["product"] == "warehouses" for r in records)
    assert get(secure, "/api/audit", token(secure, "erin"), product="../etc").status_code == 400


def test_metrics_are_valid_openmetrics_with_bounded_labels(secure):
    flight_read(secure, "alice", "logistics", "warehouses")
    with pytest.raises(KeyError):  # NOT_FOUND: she may not discover it
        flight_read(secure, "alice", "sales", "daily_revenue")
    r = get(secure, "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = lambda name: [(s.name, s.labels, s.value) for s in families[name].samples]
    requests_by = {(l["rpc"], l["code"]): v for n, l, v in samples("meshgate_rpc_requests") if n.endswith("_total")}
    assert requests_by[("DoGet", "OK")] >= 1 and requests_by[("GetFlightInfo", "NOT_FOUND")] >= 1
    assert any(n.endswith("_bucket") for n, _, _ in samples("meshgate_rpc_duration_seconds"))
    served = {(l["product"], l["consumer"]): v for n, l, v in samples("meshgate_rows_served") if n.endswith("_total")}
    assert served[("logistics/warehouses", "alice")] >= 24
    ports = {l["product"]: v for _, l, v in samples("meshgate_port_up")}
    assert ports["sales/orders"] == 1 and ports["customers/profiles"] == 1
    for name in ["meshgate_streams_active", "meshgate_audit_queue_depth", "meshgate_cache_requests",
                 "meshgate_catalog_reloads", "meshgate_memory_pool_reserved_bytes"]:
        assert name in families, name


def test_metrics_can_require_an_operator(tmp_path):
    s = Server(None, "--metrics-auth", "admin", cwd=tmp_path, secure=True)
    try:
        assert get(s, "/metrics").status_code == 401
        assert get(s, "/metrics", token(s, "alice")).status_code == 403
        assert get(s, "/metrics", token(s, "olga")).status_code == 200
    finally:
        s.stop()


def test_sign_in_sets_a_strict_http_only_cookie_and_forms_need_csrf(secure):
    r = requests.post(f"{secure.http}/api/session", headers=basic("alice"), timeout=30)
    cookie = r.headers["set-cookie"]
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"]:
        assert flag in cookie, cookie
    assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    # The cookie alone authenticates the API.
    session = r.cookies["meshgate_session"]
    assert get(secure, "/api/session", {"Cookie": f"meshgate_session={session}"}).json()["subject"] == "alice"
    # A sign-in form posted without the CSRF cookie, or from another site, is refused.
    form = {"username": "alice", "password": "alice-dev-password", "csrf": "x", "next": "/"}
    r = requests.post(f"{secure.http}/login", data=form, timeout=30, allow_redirects=False)
    assert r.status_code == 403 and "meshgate_session=" not in r.headers.get("set-cookie", "")
    page = requests.Session()
    csrf_of = lambda html: html.split('name="csrf" value="')[1].split('"')[0]
    csrf = csrf_of(page.get(f"{secure.http}/login", timeout=30).text)
    cross = page.post(f"{secure.http}/login", data={**form, "csrf": csrf}, headers={"Origin": "https://evil.example"},
                      timeout=30, allow_redirects=False)
    assert cross.status_code == 403 and "meshgate_session=" not in cross.headers.get("set-cookie", "")
    # The refused form is shown again with a fresh CSRF token.
    csrf = csrf_of(cross.text)
    ok = page.post(f"{secure.http}/login", data={**form, "csrf": csrf, "next": "//evil.example/"}, timeout=30,
                   allow_redirects=False)
    assert ok.status_code in (302, 303) and ok.headers["location"] == "/"
    wrong = page.post(f"{secure.http}/login", data={**form, "csrf": csrf, "password": "nope"}, timeout=30)
    assert wrong.status_code == 401 and "Sign in" in wrong.text
