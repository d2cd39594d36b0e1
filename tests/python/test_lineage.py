"""Lineage: every read that streams and every publish is reported as OpenLineage run events
(START, then COMPLETE, FAIL or ABORT) to an HTTP endpoint and a JSON-lines file, naming the
consumer, the products read with their schema and the columns used, and the governance applied;
a slow or dead endpoint never holds up a read."""

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import requests
from adbc_driver_flightsql import DatabaseOptions

from conftest import Server
from test_publish import declare, publish, rows, signed_in


class Collector:
    """A small OpenLineage endpoint: every POSTed event lands in `events`; with `stall`, each
    request hangs until the collector is closed."""

    def __init__(self, stall=False):
        self.events = queue.Queue()
        self.release = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                if stall:
                    collector.release.wait()
                collector.events.put((self.path, self.headers.get("content-type"), json.loads(body)))
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v1/lineage"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.seen = []

    def until(self, found, timeout=60):
        """Events received until `found(events)` holds (waits on arrivals, not on time)."""
        while not found(self.seen):
            path, content_type, event = self.events.get(timeout=timeout)
            assert path == "/api/v1/lineage" and content_type == "application/json"
            self.seen.append(event)
        return self.seen

    def close(self):
        self.release.set()
        self.httpd.shutdown()


def runs(events, kind, job):
    """The events of runs of `kind` (READ, PUBLISH) by `job`, grouped by run id."""
    out = {}
    for e in events:
        if e["job"]["name"] == job and e["job"]["facets"]["jobType"]["jobType"] == kind:
            out.setdefault(e["run"]["runId"], []).append(e)
    return out


def ended(kind, job, count=1, end=("COMPLETE",)):
    return lambda events: sum(
        any(e["eventType"] in end for e in run) for run in runs(events, kind, job).values()) >= count


@pytest.fixture()
def lineage(tmp_path):
    declare(tmp_path)
    collector = Collector()
    server = Server(None, "--lineage-url", collector.url, "--lineage-file", str(tmp_path / "lineage.jsonl"),
                    "--lineage-namespace", "mesh-test", cwd=tmp_path, secure=True)
    server.home = tmp_path
    yield server, collector
    server.stop()
    collector.close()


def test_reads_report_the_consumer_the_products_and_the_columns_used(lineage):
    server, collector = lineage
    alice, as_alice = signed_in(server, "alice")
    desc = flight.FlightDescriptor.for_command(json.dumps(
        {"product": "customers/profiles", "columns": ["customer_id", "email"], "limit": 10}))
    info = alice.get_flight_info(desc, as_alice.call)
    assert alice.do_get(info.endpoints[0].ticket, as_alice.call).read_all().num_rows == 10

    [run] = runs(collector.until(ended("READ", "alice")), "READ", "alice").values()
    assert [e["eventType"] for e in run] == ["START", "COMPLETE"]
    start, complete = run
    assert start["schemaURL"].startswith("https://openlineage.io/spec/2-0-2/OpenLineage.json")
    assert start["job"]["namespace"] == "mesh-test"
    consumer = start["job"]["facets"]["meshgate_consumer"]
    assert consumer["subject"] == "alice" and consumer["client"]["address"].startswith("127.0.0.1")
    [read] = start["inputs"]
    assert (read["namespace"], read["name"]) == ("mesh-test", "customers/profiles")
    fields = [f["name"] for f in read["facets"]["schema"]["fields"]]
    assert "email" in fields and "birth_date" in fields
    assert read["inputFacets"]["meshgate_read"]["columns"] == ["customer_id", "email"]
    governance = read["facets"]["meshgate_governance"]
    assert governance["domain"] == "customers" and governance["policies"]
    assert {"column": "email", "strategy": "redact"} in governance["masks"], governance
    assert complete["run"]["facets"]["meshgate_delivery"]["rows"] == 10
    assert complete["run"]["runId"] == start["run"]["runId"]

    # A SQL statement through Flight SQL names every product it joins, and the statement.
    with server.client() as c:
        _, token = c.authenticate_basic_token("alice", "alice-dev-password")
    conn = flight_sql.connect(f"grpc://{server.addr}",
                              db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: token.decode()})
    sql = ("SELECT o.region, count(*) AS n FROM sales.orders o JOIN customers.profiles c "
           "ON o.customer_id = c.customer_id GROUP BY o.region")
    with conn, conn.cursor() as cur:
        cur.execute(sql)
        cur.fetch_arrow_table()
    events = collector.until(ended("READ", "alice", count=2))
    [run] = [r for r in runs(events, "READ", "alice").values() if "sql" in r[0]["job"]["facets"]]
    assert run[0]["job"]["facets"]["sql"]["query"] == sql and run[-1]["eventType"] == "COMPLETE"
    used = {i["name"]: i["inputFacets"]["meshgate_read"]["columns"] for i in run[0]["inputs"]}
    assert set(used) == {"sales/orders", "customers/profiles"}
    assert "customer_id" in used["customers/profiles"] and "email" not in used["customers/profiles"]

    # The same events are in the JSON-lines file, one per line.
    server.stop()
    lines = (server.home / "lineage.jsonl").read_text().splitlines()
    ids = {json.loads(line)["run"]["runId"] for line in lines}
    assert start["run"]["runId"] in ids and run[0]["run"]["runId"] in ids


def test_a_reader_that_goes_away_is_an_aborted_run(lineage):
    server, collector = lineage
    alice, as_alice = signed_in(server, "alice")
    info = alice.get_flight_info(flight.FlightDescriptor.for_path("customers", "profiles"), as_alice.call)
    reader = alice.do_get(info.endpoints[0].ticket, as_alice.call)
    reader.read_chunk()
    reader.cancel()
    alice.close()
    [run] = runs(collector.until(ended("READ", "alice", end=("ABORT", "COMPLETE"))), "READ", "alice").values()
    # The stream may have been wholly sent before the cancel arrived; otherwise it is aborted.
    assert run[-1]["eventType"] in ("ABORT", "COMPLETE")
    if run[-1]["eventType"] == "ABORT":
        assert "stopped reading" in run[-1]["run"]["facets"]["errorMessage"]["message"]


def test_publishes_report_the_version_written_or_why_they_failed(lineage):
    server, collector = lineage
    sam, as_sam = signed_in(server, "sam")
    publish(sam, as_sam, rows(["EMEA", "AMER"], [1, 1], [1.0, 2.0]), "sales", "targets")
    with pytest.raises(pa.ArrowInvalid, match="known_region"):
        publish(sam, as_sam, rows(["MARS"], [2], [3.0]), "sales", "targets")
    events = collector.until(ended("PUBLISH", "sam", count=2, end=("COMPLETE", "FAIL")))
    done = {r[-1]["eventType"]: r for r in runs(events, "PUBLISH", "sam").values()}
    start, complete = done["COMPLETE"]
    [out] = complete["outputs"]
    assert out["name"] == "sales/targets" and out["facets"]["version"]["datasetVersion"] == "0"
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == 2
    assert start["inputs"] == [] and start["outputs"][0]["name"] == "sales/targets"
    failed = done["FAIL"][-1]
    assert "known_region" in failed["run"]["facets"]["errorMessage"]["message"]


def test_a_dead_lineage_endpoint_never_holds_up_reads(tmp_path):
    collector = Collector(stall=True)
    server = Server(None, "--lineage-url", collector.url, "--lineage-queue", "1", cwd=tmp_path, secure=True)
    try:
        alice, as_alice = signed_in(server, "alice")
        for _ in range(5):
            info = alice.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders"), as_alice.call)
            assert alice.do_get(info.endpoints[0].ticket, as_alice.call).read_all().num_rows > 0
        metrics = requests.get(f"{server.http}/metrics", timeout=10).text
        dropped = [line for line in metrics.splitlines()
                   if line.startswith('meshgate_lineage_events_total{outcome="dropped"}')]
        assert dropped and float(dropped[0].split()[-1]) > 0, metrics
    finally:
        collector.close()
        server.stop()
