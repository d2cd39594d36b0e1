"""Contract quality rules and SLA on the serving path: manifests validated against the ODCS /
ODPS JSON Schemas, rules checked on a schedule and when the data changes, outcomes served in
describe, FlightInfo, health and `_governance/quality`, and reads that refuse stale data."""

import json
import os
import shutil
import subprocess
import time

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from conftest import BIN, Server, product


def action(client, name, body=b"", options=None):
    results = list(client.do_action(flight.Action(name, body), options=options))
    return json.loads(results[0].body.to_pybytes())


CHECKED = "quality rule checked"


def last_check(client, address):
    return action(client, "describe", address.encode())["contract"]["quality"]["last_check"]


def of(product, records):
    return [r for r in records if r["product"] == product]


def login(server, user):
    client = server.client()
    return client, flight.FlightCallOptions(headers=[client.authenticate_basic_token(user, f"{user}-dev-password")])


@pytest.fixture()
def mesh(tmp_path, sample_mesh):
    m = tmp_path / "mesh"
    shutil.copytree(sample_mesh, m)
    return m


def test_rules_run_on_schedule_and_again_when_the_data_changes(tmp_path, mesh):
    log = tmp_path / "quality.jsonl"
    s = Server(mesh, "--quality-interval", "1h", "--quality-log", str(log))
    try:
        with s.client() as c:
            # The first look (a few seconds after start) runs every rule once; its outcomes are
            # logged after they are recorded.
            s.wait_log(CHECKED, lambda rs: len(of("sales/orders", rs)) >= 5)
            first = last_check(c, "sales/orders")
            assert first["rules"] == 5 and first["status"] == "pass", first
            described = action(c, "describe", b"sales/orders")["contract"]
            names = {r["name"] for r in described["quality"]["rules"]}
            assert {"has_orders", "no_negative_amounts", "order_id_unique", "nullValues:customer_id",
                    "known_status"} == names
            assert described["freshness"]["status"] == "fresh"
            assert described["freshness"]["sla"]["property"] == "latency"

            # The `quality` action is the same part of describe.
            q = action(c, "quality", b"sales/orders")
            assert q["quality"]["last_check"] == first and q["freshness"]["status"] == "fresh"
            # FlightInfo says the same: last check and freshness travel with the endpoints.
            info = c.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders"))
            meta = json.loads(info.app_metadata)
            assert meta["quality"]["last_check"]["status"] == "pass"
            assert meta["freshness"]["status"] == "fresh"

            # A producer lands a file with a negative amount and an order id already used.
            region = sorted((mesh / "sales" / "orders" / "data").glob("region=*"))[0]
            source = pq.read_table(sorted(region.glob("*.parquet"))[0])
            bad = source.slice(0, 1).set_column(
                source.schema.get_field_index("amount"), "amount", pa.array([-10.0], pa.float64()))
            pq.write_table(bad, region / "late.parquet")
            # The interval is an hour: only the data change can trigger this check.
            s.wait_log(CHECKED, lambda rs: any(r["rule"] == "no_negative_amounts" and r["status"] == "fail"
                                                 for r in rs))
            second = last_check(c, "sales/orders")
            assert second["data_version"] != first["data_version"]
            assert second["status"] == "fail"
            failing = {f["rule"]: f for f in second["failing"]}
            assert set(failing) == {"no_negative_amounts", "order_id_unique"}, second
            assert failing["no_negative_amounts"]["value"] == 1

            health = action(c, "health")
            orders = next(p for p in health["products"] if p["product"] == "sales/orders")
            assert orders["ports"][0]["quality"] == "fail"
            assert health["status"] == "degraded"
    finally:
        s.stop()
    # Outcomes were appended to the log (a restart reads them back: a unit test of the store).
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {o["trigger"] for o in lines} == {"schedule"}
    assert any(o["rule"] == "no_negative_amounts" and not o["passed"] for o in lines)


def test_a_cron_schedule_reruns_its_rule_and_only_it(tmp_path):
    mesh = tmp_path / "mesh"
    product(mesh, "lab", "counts", [("n", "integer")], {"adapter": "files", "location": "n.csv", "format": "csv"})
    (mesh / "lab" / "counts" / "n.csv").write_text("n\n1\n2\n")
    contract = mesh / "lab" / "counts" / "v1.odcs.yaml"
    contract.write_text(contract.read_text().replace("      - name: n\n", """      - name: n
        quality:
          - {id: every_two_seconds, metric: nullValues, mustBe: 0, scheduler: cron, schedule: "*/2 * * * * *"}
          - {id: on_the_interval, metric: duplicateValues, mustBe: 0}
"""))
    s = Server(mesh, "--quality-interval", "1h")
    try:
        found = s.wait_log(CHECKED, lambda rs: sum(r["rule"] == "every_two_seconds" for r in rs) >= 3)
        # The hourly rule ran once (the first look); the cron rule ran on its own schedule.
        assert sum(r["rule"] == "on_the_interval" for r in found) == 1
    finally:
        s.stop()


def test_outcomes_are_a_governed_product_and_checks_run_on_request(tmp_path):
    s = Server(None, "--quality-interval", "1h", cwd=tmp_path, secure=True)
    try:
        olga, as_olga = login(s, "olga")
        outcomes = action(olga, "check-quality", b"sales/orders", options=as_olga)
        assert len(outcomes) == 5 and all(o["passed"] for o in outcomes), outcomes
        assert {o["trigger"] for o in outcomes} == {"manual"}

        alice, as_alice = login(s, "alice")
        with pytest.raises(flight.FlightUnauthorizedError):
            action(alice, "check-quality", b"", options=as_alice)
        # Governance records are for auditors: alice cannot even see the product.
        with pytest.raises(pa.ArrowException, match="_governance"):
            alice.get_flight_info(flight.FlightDescriptor.for_path("_governance", "quality"), options=as_alice)

        erin, as_erin = login(s, "erin")
        info = erin.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(
            {"product": "_governance/quality", "filter": "product = 'orders' AND \"trigger\" = 'manual'"})),
            options=as_erin)
        rows = erin.do_get(info.endpoints[0].ticket, options=as_erin).read_all().to_pylist()
        assert sorted(r["rule"] for r in rows) == sorted(o["rule"] for o in outcomes)
        assert all(r["passed"] and r["data_version"] for r in rows)
    finally:
        s.stop()


def test_max_staleness_refuses_data_older_than_asked(mesh):
    # customers/profiles promises a latency of 4 h; its data last changed two days ago.
    two_days_ago = time.time() - 2 * 86400
    for f in (mesh / "customers" / "profiles").rglob("*"):
        if f.is_file() and not f.name.endswith(".yaml"):
            os.utime(f, (two_days_ago, two_days_ago))
    s = Server(mesh)
    try:
        with s.client() as c:
            def ask(product, staleness):
                q = {"product": product, "max_staleness": staleness}
                return c.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(q)))

            with pytest.raises(pa.ArrowException, match="customers/profiles") as e:
                ask("customers/profiles", "1h")
            assert "latency 4 h" in str(e.value) and "max_staleness" in str(e.value)
            assert "precondition" in str(e.value).lower()
            # Fresh data passes, and a generous limit lets old data through.
            assert ask("sales/orders", "1h").endpoints
            assert ask("customers/profiles", "3d").endpoints
            with pytest.raises(pa.ArrowInvalid, match="max_staleness"):
                ask("sales/orders", "soon")
            described = action(c, "describe", b"customers/profiles")["contract"]["freshness"]
            assert described["status"] == "stale" and described["age_seconds"] > 86400
            health = action(c, "health")
            profiles = next(p for p in health["products"] if p["product"] == "customers/profiles")
            assert profiles["ports"][0]["freshness"] == "stale"
    finally:
        s.stop()


def test_manifests_must_be_valid_against_the_standards(tmp_path, mesh):
    contract = mesh / "sales" / "orders" / "v1.odcs.yaml"
    # The sample's old mistake: quality at the top level, with the deprecated `rule`.
    contract.write_text(contract.read_text() + "quality:\n  - type: library\n    rule: uniqueness\n")
    product(mesh, "lab", "custom", [("a", "integer")], {"adapter": "files", "location": "a.csv", "format": "csv"})
    (mesh / "lab" / "custom" / "a.csv").write_text("a\n1\n")
    custom = mesh / "lab" / "custom" / "v1.odcs.yaml"
    custom.write_text(custom.read_text().replace(
        "      - name: a\n", "      - name: a\n        quality:\n          - type: custom\n            engine: soda\n"
        "            implementation: 'type: duplicate_count'\n"))
    checked = subprocess.run([str(BIN), "check", "--mesh", str(mesh)], capture_output=True, text=True)
    assert checked.returncode == 1
    assert "sales/orders/v1.odcs.yaml" in checked.stderr and "ODCS v3.1.0" in checked.stderr
    assert "quality" in checked.stderr
    assert "schema[0].properties[0].quality[0]" in checked.stderr and "soda" in checked.stderr
    assert "ok       customers/profiles" in checked.stderr
    s = Server(mesh)
    try:
        with s.client() as c:
            with pytest.raises(flight.FlightUnavailableError, match="v1.odcs.yaml"):
                c.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders"))
            described = action(c, "describe", b"sales/orders")
            assert described["status"] == "unavailable"
            assert any("ODCS v3.1.0" in p["message"] for p in described["problems"])
    finally:
        s.stop()


def test_the_catalog_api_shows_outcomes_per_rule(tmp_path, mesh):
    import urllib.request
    s = Server(mesh)
    try:
        with s.client() as c:
            action(c, "check-quality", b"sales/orders")
        with urllib.request.urlopen(f"{s.http}/api/products/sales/orders") as r:
            doc = json.load(r)
        rules = {r["name"]: r for r in doc["contract"]["quality"]["rules"]}
        assert rules["has_orders"]["last"]["passed"] is True and rules["has_orders"]["last"]["value"] > 0
        assert doc["contract"]["freshness"]["status"] == "fresh"
        with urllib.request.urlopen(f"{s.http}/products/sales/orders") as r:
            page = r.read().decode()
        assert 'id="quality"' in page and "has_orders" in page and "5 of 5 rules passed" in page
    finally:
        s.stop()


def test_describe_shows_upstream_and_downstream_as_the_caller_may_see_them(tmp_path):
    s = Server(None, cwd=tmp_path, secure=True)
    try:
        carol, as_carol = login(s, "carol")
        revenue = action(carol, "describe", b"sales/daily_revenue", options=as_carol)["lineage"]
        assert revenue["upstream"] == [{"contract_id": "urn:meshgate:sample:sales:orders:v1",
                                        "product": "sales/orders", "port": "v1"}]
        orders = action(carol, "lineage", b"sales/orders", options=as_carol)["lineage"]
        assert [d["product"] for d in orders["downstream"]] == ["sales/daily_revenue"]
        # alice may not discover the restricted aggregate: it is not named to her.
        alice, as_alice = login(s, "alice")
        assert action(alice, "describe", b"sales/orders", options=as_alice)["lineage"]["downstream"] == []
    finally:
        s.stop()
