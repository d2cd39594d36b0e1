"""The producer path: a domain team publishes versions of its product through DoPut on the
product's path and through Flight SQL bulk ingest (ADBC), checked against the contract before
anything becomes visible, committed atomically into a Delta table, and audited."""

import json
import signal

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from adbc_driver_flightsql import DatabaseOptions

from conftest import Server

CONTRACT = """apiVersion: v3.1.0
kind: DataContract
id: urn:test:sales:targets:v1
name: targets
version: 1.0.0
status: active
domain: sales
schema:
  - name: targets
    quality:
      - id: one_target_per_region_and_month
        metric: duplicateValues
        arguments:
          properties: [region, month]
        mustBe: 0
        dimension: uniqueness
    properties:
      - name: region
        logicalType: string
        required: true
        quality:
          - id: known_region
            metric: invalidValues
            arguments:
              validValues: [EMEA, AMER, APAC]
            mustBe: 0
      - name: month
        logicalType: date
        required: true
      - name: target
        logicalType: number
        physicalType: double
customProperties:
  - property: meshgate.binding
    value: {"adapter": "delta", "location": "table/"}
"""

PRODUCT = """apiVersion: v1.0.0
kind: DataProduct
id: urn:test:sales:targets
name: Sales targets
domain: sales
status: active
outputPorts:
  - name: v1
    version: 1.0.0
    contractId: urn:test:sales:targets:v1
"""


def declare(home):
    """Declares sales/targets (never published) in the mesh the sample is written around."""
    d = home / "mesh" / "sales" / "targets"
    d.mkdir(parents=True)
    (d / "product.odps.yaml").write_text(PRODUCT)
    (d / "v1.odcs.yaml").write_text(CONTRACT)
    return d


def rows(regions, months, targets):
    import datetime
    return pa.table({
        "region": pa.array(regions, pa.string()),
        "month": pa.array([datetime.date(2026, m, 1) for m in months], pa.date32()),
        "target": pa.array(targets, pa.float64()),
    })


def read_all(client, signed, *path):
    info = client.get_flight_info(flight.FlightDescriptor.for_path(*path), signed.call)
    return pa.concat_tables([client.do_get(e.ticket, signed.call).read_all() for e in info.endpoints])


@pytest.fixture()
def gateway(tmp_path):
    declare(tmp_path)
    s = Server(None, cwd=tmp_path, secure=True)
    s.home = tmp_path
    yield s
    s.stop()


class SignedIn:
    """A user's bearer token: `call` options, and `mode(...)` with the publish mode header."""

    def __init__(self, headers):
        self.token = headers
        self.call = flight.FlightCallOptions(headers=headers)

    def mode(self, mode):
        return flight.FlightCallOptions(headers=[*self.token, (b"x-meshgate-mode", mode.encode())])


def signed_in(server, user):
    client = server.client()
    return client, SignedIn([client.authenticate_basic_token(user, f"{user}-dev-password")])


def publish(client, opts, table, *path, mode=None):
    call = opts.mode(mode) if mode else opts.call
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(*path), table.schema, options=call)
    writer.write_table(table)
    writer.done_writing()
    meta = reader.read()
    writer.close()
    return json.loads(meta.to_pybytes())


def test_a_domain_publishes_versions_and_readers_see_only_committed_ones(gateway):
    sam, as_sam = signed_in(gateway, "sam")
    alice, as_alice = signed_in(gateway, "alice")
    # Declared, never published: its reads say so.
    with pytest.raises(flight.FlightUnavailableError, match="`sales/targets` has no published version yet"):
        read_all(alice, as_alice, "sales", "targets")

    first = publish(sam, as_sam, rows(["EMEA", "AMER", "APAC"], [1, 1, 1], [10, 20, 30]), "sales", "targets")
    assert (first["version"], first["rows"], first["mode"]) == (0, 3, "append"), first
    assert read_all(alice, as_alice, "sales", "targets").num_rows == 3

    # Append adds, replace is the whole new version; integers are stored as the declared double.
    more = rows(["EMEA", "AMER"], [2, 2], [11, 21]).set_column(2, "target", pa.array([11, 21], pa.int64()))
    assert publish(sam, as_sam, more, "sales", "targets")["version"] == 1
    got = read_all(alice, as_alice, "sales", "targets")
    assert got.num_rows == 5 and got.schema.field("target").type == pa.float64()
    assert publish(sam, as_sam, rows(["APAC"], [3], [33]), "sales", "targets", mode="replace")["version"] == 2
    assert read_all(alice, as_alice, "sales", "targets").to_pydict()["target"] == [33.0]


def test_publishes_that_break_the_contract_are_refused_and_change_nothing(gateway):
    sam, as_sam = signed_in(gateway, "sam")
    base = rows(["EMEA", "AMER"], [1, 1], [1, 2])
    publish(sam, as_sam, base, "sales", "targets")

    extra = base.append_column("note", pa.array(["x", "y"]))
    with pytest.raises(pa.ArrowInvalid, match="columns `note` are not in the contract"):
        publish(sam, as_sam, extra, "sales", "targets")
    null_region = rows([None, "EMEA"], [2, 2], [1, 2])
    with pytest.raises(Exception, match=r"column `region` .*required.*rows 0"):
        publish(sam, as_sam, null_region, "sales", "targets")
    as_text = base.set_column(2, "target", pa.array(["1", "2"]))
    with pytest.raises(Exception, match="column `target` is Utf8"):
        publish(sam, as_sam, as_text, "sales", "targets")
    # Blocking rules run on the version the publish would create: appending a (region, month)
    # already published fails uniqueness, naming the rule and the offending row sent.
    again = rows(["APAC", "EMEA"], [1, 1], [5, 6])
    with pytest.raises(Exception, match=r"one_target_per_region_and_month.*offending rows 1"):
        publish(sam, as_sam, again, "sales", "targets")
    with pytest.raises(Exception, match=r"known_region.*offending rows 0"):
        publish(sam, as_sam, rows(["MARS"], [5], [1]), "sales", "targets")
    with pytest.raises(Exception, match="x-meshgate-mode is `upsert`"):
        publish(sam, as_sam, base, "sales", "targets", mode="upsert")
    # Nothing of the refused publishes is visible.
    assert read_all(sam, as_sam, "sales", "targets").num_rows == 2

    # Who may publish what: the owning domain only, and only products stored as Delta tables.
    alice, as_alice = signed_in(gateway, "alice")
    with pytest.raises(Exception, match="may not publish `sales/targets`"):
        publish(alice, as_alice, base, "sales", "targets")
    with pytest.raises(Exception, match="adapter: delta"):
        publish(sam, as_sam, base, "sales", "orders")
    with pytest.raises(Exception, match="may not publish `logistics/warehouses`"):
        publish(sam, as_sam, base, "logistics", "warehouses")

    # The audit log holds the publish with its caller, rows and version, and the refusals.
    erin, as_erin = signed_in(gateway, "erin")
    desc = flight.FlightDescriptor.for_command(json.dumps(
        {"product": "_governance/audit", "filter": "kind = 'publish'"}))
    info = erin.get_flight_info(desc, as_erin.call)
    audit = pa.concat_tables([erin.do_get(e.ticket, as_erin.call).read_all() for e in info.endpoints]).to_pylist()
    assert any(r["outcome"]["status"] == "OK" and r["actor"]["sub"] == "sam" and r["outcome"]["rows"] == 2
               and r["resource"]["product"] == "targets" for r in audit), audit
    assert sum(r["outcome"]["status"] != "OK" for r in audit) >= 5, audit


def test_adbc_ingest_publishes_through_flight_sql(gateway):
    with gateway.client() as c:
        _, token = c.authenticate_basic_token("sam", "sam-dev-password")
    conn = flight_sql.connect(f"grpc://{gateway.addr}",
                              db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: token.decode()})
    with conn, conn.cursor() as cur:
        assert cur.adbc_ingest("targets", rows(["EMEA"], [1], [1.5]), mode="create", db_schema_name="sales") == 1
        with pytest.raises(Exception, match="already has a published version"):
            cur.adbc_ingest("targets", rows(["AMER"], [1], [2.5]), mode="create", db_schema_name="sales")
        assert cur.adbc_ingest("targets", rows(["AMER"], [1], [2.5]), mode="append", db_schema_name="sales") == 1
        cur.execute("SELECT region, target FROM sales.targets ORDER BY region")
        assert cur.fetch_arrow_table().to_pydict() == {"region": ["AMER", "EMEA"], "target": [2.5, 1.5]}
        assert cur.adbc_ingest("targets", rows(["APAC"], [2], [3.0]), mode="replace", db_schema_name="sales") == 1
        cur.execute("SELECT count(*) AS n FROM sales.targets")
        assert cur.fetch_arrow_table().column("n")[0].as_py() == 1
        with pytest.raises(Exception, match="tables cannot be created|not found|no product"):
            cur.adbc_ingest("nope", rows(["APAC"], [2], [3.0]), mode="create", db_schema_name="sales")


def test_a_crash_mid_publish_leaves_the_last_committed_version(tmp_path):
    declare(tmp_path)
    s = Server(None, cwd=tmp_path, secure=True)
    try:
        sam, as_sam = signed_in(s, "sam")
        publish(sam, as_sam, rows(["EMEA"], [1], [1]), "sales", "targets")
        # A large replace: once its rules passed and its files are being written, kill -9.
        n = 3_000_000
        big = pa.table({
            "region": pa.array(["EMEA", "AMER", "APAC"] * (n // 3)),
            "month": pa.array(range(n), pa.int32()).cast(pa.date32()),
            "target": pa.array(range(n), pa.float64()),
        })
        writer, reader = sam.do_put(flight.FlightDescriptor.for_path("sales", "targets"), big.schema,
                                    options=as_sam.mode("replace"))
        writer.write_table(big, max_chunksize=65536)
        writer.done_writing()
        s.wait_log("publish checked; committing", lambda rs: len(rs) >= 1)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=30)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    again = Server(None, cwd=tmp_path, secure=True)
    try:
        alice, as_alice = signed_in(again, "alice")
        got = read_all(alice, as_alice, "sales", "targets")
        assert got.num_rows in (1, n), got.num_rows
        if got.num_rows == n:
            pytest.skip("the commit finished before the kill; the version is whole either way")
        assert got.to_pydict()["region"] == ["EMEA"]
    finally:
        again.stop()


def describe(client, signed, address):
    [result] = list(client.do_action(flight.Action("describe", address.encode()), signed.call))
    return json.loads(result.body.to_pybytes())


def read_query(client, signed, **query):
    desc = flight.FlightDescriptor.for_command(json.dumps(query))
    info = client.get_flight_info(desc, signed.call)
    return info, pa.concat_tables([client.do_get(e.ticket, signed.call).read_all() for e in info.endpoints])


def test_pinned_versions_read_exactly_that_snapshot_and_describe_lists_them(gateway):
    sam, as_sam = signed_in(gateway, "sam")
    alice, as_alice = signed_in(gateway, "alice")
    publish(sam, as_sam, rows(["EMEA", "AMER"], [1, 1], [1, 2]), "sales", "targets")
    publish(sam, as_sam, rows(["APAC"], [1], [3]), "sales", "targets")
    publish(sam, as_sam, rows(["EMEA"], [2], [4]), "sales", "targets", mode="replace")

    versions = describe(alice, as_alice, "sales/targets")["versions"]
    assert [(v["version"], v["author"], v["mode"], v["rows"]) for v in versions] == [
        (2, "sam", "replace", 1), (1, "sam", "append", 1), (0, "sam", "append", 2)], versions
    assert all(v["committed"].endswith("Z") for v in versions), versions

    # By number on a path and in JSON, by time in JSON and on a path: exactly that snapshot.
    assert read_all(alice, as_alice, "sales", "targets", "@0").num_rows == 2
    assert read_all(alice, as_alice, "sales", "targets", "v1", "@1").num_rows == 3
    info, got = read_query(alice, as_alice, product="sales/targets", version=1, columns=["region"])
    assert sorted(got.column("region").to_pylist()) == ["AMER", "APAC", "EMEA"]
    assert json.loads(info.app_metadata)["data_version"] == 1
    at = versions[1]["committed"]
    _, got = read_query(alice, as_alice, product="sales/targets", as_of=at)
    assert got.num_rows == 3
    assert read_all(alice, as_alice, "sales", "targets", "@" + versions[2]["committed"]).num_rows == 2

    # A ticket pins the version it was planned with: a publish in between changes nothing.
    info = alice.get_flight_info(flight.FlightDescriptor.for_path("sales", "targets", "@1"), as_alice.call)
    publish(sam, as_sam, rows(["AMER"], [3], [5]), "sales", "targets")
    assert alice.do_get(info.endpoints[0].ticket, as_alice.call).read_all().num_rows == 3
    assert read_all(alice, as_alice, "sales", "targets").num_rows == 2

    # Versions that do not exist, times before the first commit, unreadable pins, and products
    # whose storage keeps no versions each get a clear refusal.
    with pytest.raises(pa.ArrowKeyError, match="version 9 does not exist"):
        read_all(alice, as_alice, "sales", "targets", "@9")
    with pytest.raises(pa.ArrowKeyError, match="no version was committed at or before"):
        read_query(alice, as_alice, product="sales/targets", as_of="2001-01-01T00:00:00Z")
    with pytest.raises(pa.ArrowInvalid, match="pins no data version"):
        read_all(alice, as_alice, "sales", "targets", "@yesterday")
    with pytest.raises(pa.ArrowInvalid, match="not both"):
        read_query(alice, as_alice, product="sales/targets", version=1, as_of=at)
    with pytest.raises(pa.ArrowInvalid, match="keeps no versions of its data"):
        read_all(alice, as_alice, "sales", "orders", "@1")

    # The audit record of a pinned read names the version read.
    erin, as_erin = signed_in(gateway, "erin")
    _, audit = read_query(erin, as_erin, product="_governance/audit", filter="rpc = 'DoGet' AND version = 1")
    assert audit.num_rows >= 1


def test_concurrent_publishers_never_produce_a_torn_or_unchecked_version(gateway):
    import concurrent.futures

    sam, as_sam = signed_in(gateway, "sam")
    publish(sam, as_sam, rows(["EMEA"], [1], [0]), "sales", "targets")

    def one(i):
        client, signed = signed_in(gateway, "sam")
        # Each publisher sends 3 rows; publishers 0-3 and 4-7 send the same keys, so of each
        # group only the first to commit passes the uniqueness rule.
        month = 2 + i % 4
        table = rows(["EMEA", "AMER", "APAC"], [month] * 3, [float(i + 1)] * 3)
        try:
            return publish(client, signed, table, "sales", "targets")["version"]
        except pa.ArrowException as e:
            return str(e)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    committed = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if not isinstance(r, int)]
    assert len(committed) == 4 and len(set(committed)) == 4, results
    assert all("one_target_per_region_and_month" in r for r in refused), refused
    got = read_all(sam, as_sam, "sales", "targets").to_pydict()
    assert len(got["region"]) == 1 + 3 * 4
    # Every version is whole: each publisher's three rows share its target value.
    by_target = {}
    for t in got["target"]:
        by_target[t] = by_target.get(t, 0) + 1
    assert sorted(by_target.values()) == [1, 3, 3, 3, 3], by_target
