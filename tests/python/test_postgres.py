"""Products in PostgreSQL: a throwaway server (initdb into a temporary folder, a free port on
127.0.0.1, statements logged so the SQL the gateway sends can be checked), a database configured
in the stores file with its password by reference, tables, a read-only query, a split read, every
mapped type, a large table streamed with bounded memory, and the server stopped at start and
mid-stream."""

import datetime
import decimal
import json
import shutil
import subprocess
import tempfile
import os
import socket
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from conftest import REPO, Server, product, read
from pgserver import PG_BIN, Postgres


READER_PASSWORD = "reader-test-password"

TYPES_SQL = """
CREATE TABLE types (
  id integer PRIMARY KEY, small smallint, big bigint, amount numeric(12,2), ratio real,
  score double precision, name text, code varchar(10), flag boolean, day date, at_time time,
  at timestamp, at_tz timestamptz, span interval, uid uuid, doc json, docb jsonb, raw bytea,
  tags text[], nums integer[], scores float8[]);
INSERT INTO types VALUES (1, -2, 9000000000, 1234.56, 1.5, 2.25, 'Zoë', 'AB', true, '2024-02-29',
  '13:45:10.5', '2024-02-29 13:45:10.123456', '2024-02-29 13:45:10+02',
  '1 year 2 mons 3 days 04:05:06', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": 1}',
  '{"b": [1, 2]}', '\\x00ff', ARRAY['x', NULL, 'O''Brien'], ARRAY[1, NULL, 3], '{}');
INSERT INTO types (id) VALUES (2);
CREATE TABLE orders (id bigint PRIMARY KEY, region text NOT NULL, amount integer, note text);
INSERT INTO orders SELECT i, CASE WHEN i % 2 = 0 THEN 'EMEA' ELSE 'AMER' END, i % 100, 'n' || i
  FROM generate_series(1, 1000) i;
CREATE TABLE big (id bigint NOT NULL, payload text NOT NULL);
INSERT INTO big SELECT i, repeat('x', 200) || i FROM generate_series(1, 1000000) i;
CREATE TABLE money_table (id integer, price money);
GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader;
"""

TYPE_COLUMNS = [("id", "integer"), ("small", "integer"), ("big", "integer"), ("amount", "number"),
                ("ratio", "number"), ("score", "number"), ("name", "string"), ("code", "string"),
                ("flag", "boolean"), ("day", "date"), ("at_time", "time"), ("at", "timestamp"),
                ("at_tz", "timestamp"), ("span", None), ("uid", "string"), ("doc", "string"),
                ("docb", "string"), ("raw", None), ("tags", "array"), ("nums", "array"), ("scores", "array")]
ORDER_COLUMNS = [("id", "integer"), ("region", "string"), ("amount", "integer"), ("note", "string")]


@pytest.fixture(scope="module")
def pg():
    if PG_BIN is None:
        pytest.fail("PostgreSQL server binaries are not installed (scripts/test.sh installs them)")
    certs = Path(tempfile.mkdtemp(prefix="meshgate-pg-certs-"))
    for d in ("ours", "theirs"):
        subprocess.run(["bash", str(REPO / "certs" / "make-dev-certs.sh"), str(certs / d)], check=True, capture_output=True)
    server = Postgres(tls=certs / "ours")
    server.certs = certs
    try:
        server.start()
        server.sql(f"CREATE ROLE reader LOGIN PASSWORD '{READER_PASSWORD}'; CREATE DATABASE sales;")
        server.sql(TYPES_SQL, db="sales")
        yield server
        server.stop("immediate")
    finally:
        server.remove()
        shutil.rmtree(certs, ignore_errors=True)


def write_mesh(root: Path, pg: Postgres, *, retry: bool = False) -> tuple[Path, Path]:
    secret = root / "reader-password"
    secret.write_text(READER_PASSWORD + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    stores = root / "stores.yaml"
    base = {"host": "127.0.0.1", "port": pg.port, "database": "sales", "user": "reader",
            "password": {"file": str(secret)}, "sslMode": "disable", "connectTimeout": "3s"}
    stores.write_text(json.dumps({"postgres": [
        dict(base, name="sales_db", domains=["sales"]),
        dict(base, name="down_db", port=closed_port),
        dict(base, name="tls_db", sslMode="verify-full", sslRootCert=str(pg.certs / "ours" / "ca.pem")),
        dict(base, name="untrusted_db", sslMode="verify-full", sslRootCert=str(pg.certs / "theirs" / "ca.pem")),
    ]}))
    mesh = root / "mesh"
    mesh.mkdir()
    product(mesh, "sales", "types", TYPE_COLUMNS, {"adapter": "postgres", "database": "sales_db", "table": "types"})
    product(mesh, "sales", "orders", ORDER_COLUMNS,
            {"adapter": "postgres", "database": "sales_db", "table": "public.orders"})
    product(mesh, "sales", "orders_keyed", ORDER_COLUMNS,
            {"adapter": "postgres", "database": "sales_db", "table": "orders"}, key=("id",))
    product(mesh, "sales", "orders_split", ORDER_COLUMNS,
            {"adapter": "postgres", "database": "sales_db", "table": "orders", "split": {"column": "id", "parts": 4}})
    product(mesh, "sales", "emea", [("id", "integer"), ("doubled", "integer")],
            {"adapter": "postgres", "database": "sales_db",
             "query": "SELECT id, amount * 2 AS doubled FROM orders WHERE region = 'EMEA' -- ours"})
    product(mesh, "sales", "big", [("id", "integer"), ("payload", "string")],
            {"adapter": "postgres", "database": "sales_db", "table": "big"})
    product(mesh, "sales", "priced", [("id", "integer"), ("price", None)],
            {"adapter": "postgres", "database": "sales_db", "table": "money_table"})
    product(mesh, "sales", "orders_tls", ORDER_COLUMNS,
            {"adapter": "postgres", "database": "tls_db", "table": "orders"})
    product(mesh, "sales", "orders_untrusted", ORDER_COLUMNS,
            {"adapter": "postgres", "database": "untrusted_db", "table": "orders"})
    product(mesh, "sales", "down", ORDER_COLUMNS, {"adapter": "postgres", "database": "down_db", "table": "orders"})
    product(mesh, "other", "peek", ORDER_COLUMNS, {"adapter": "postgres", "database": "sales_db", "table": "orders"})
    product(mesh, "files", "local", [("n", "integer")], {"adapter": "files", "location": "data/", "format": "parquet"})
    (mesh / "files" / "local" / "data").mkdir()
    pq.write_table(pa.table({"n": pa.array(range(10), pa.int64())}), mesh / "files" / "local" / "data" / "n.parquet")
    return mesh, stores


@pytest.fixture(scope="module")
def gateway(pg, tmp_path_factory):
    mesh, stores = write_mesh(tmp_path_factory.mktemp("pg-mesh"), pg)
    server = Server(mesh, "--stores", str(stores), "--no-watch")
    yield server
    server.stop()


def health(c) -> dict:
    body = b"".join(r.body.to_pybytes() for r in c.do_action(flight.Action("health", b"")))
    return {p["product"]: p for p in json.loads(body)["products"]}


def test_every_mapped_type_and_nulls(gateway):
    with gateway.client() as c:
        t = read(c, "sales", "types").sort_by("id")
    s = t.schema
    assert s.field("id").type == pa.int32() and not s.field("id").nullable, "primary key: not null"
    expected_types = {
        "small": pa.int16(), "big": pa.int64(), "amount": pa.decimal128(12, 2), "ratio": pa.float32(),
        "score": pa.float64(), "name": pa.string(), "code": pa.string(), "flag": pa.bool_(),
        "day": pa.date32(), "at_time": pa.time64("ns"), "at": pa.timestamp("ns"),
        "at_tz": pa.timestamp("ns", tz="UTC"), "span": pa.month_day_nano_interval(), "uid": pa.string(),
        "doc": pa.string(), "docb": pa.string(), "raw": pa.binary(), "tags": pa.list_(pa.string()),
        "nums": pa.list_(pa.int32()), "scores": pa.list_(pa.float64()),
    }
    for name, typ in expected_types.items():
        assert s.field(name).type == typ, (name, s.field(name).type)
        assert s.field(name).nullable, name
    row = t.slice(0, 1).to_pylist()[0]
    assert row["small"] == -2 and row["big"] == 9_000_000_000
    assert row["amount"] == decimal.Decimal("1234.56")
    assert row["ratio"] == 1.5 and row["score"] == 2.25
    assert row["name"] == "Zoë" and row["code"] == "AB" and row["flag"] is True
    assert row["day"] == datetime.date(2024, 2, 29)
    assert row["at_time"] == datetime.time(13, 45, 10, 500000)
    assert t.column("at")[0].value == 1709214310123456000
    assert t.column("at_tz")[0].value == 1709207110000000000, "13:45:10+02 is 11:45:10 UTC"
    span = t.column("span")[0].value
    assert (span.months, span.days, span.nanoseconds) == (14, 3, (4 * 3600 + 5 * 60 + 6) * 10**9)
    assert row["uid"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert json.loads(row["doc"]) == {"a": 1} and json.loads(row["docb"]) == {"b": [1, 2]}
    assert row["raw"] == b"\x00\xff"
    assert row["tags"] == ["x", None, "O'Brien"] and row["nums"] == [1, None, 3] and row["scores"] == []
    nulls = t.slice(1, 1).to_pylist()[0]
    assert nulls["id"] == 2 and all(v is None for k, v in nulls.items() if k != "id"), nulls


def test_filters_projection_and_limit_reach_the_sql(gateway, pg):
    with gateway.client() as c:
        before = len(pg.statements())
        got = read(c, "sales", "orders", columns=["id", "note"],
                   filter="region = 'EMEA' AND amount >= 90 AND note LIKE 'n1%'")
        sent = pg.statements()[before:]
    expected = sorted(i for i in range(1, 1001) if i % 2 == 0 and i % 100 >= 90 and str(i).startswith("1"))
    assert sorted(got.column("id").to_pylist()) == expected
    reads = [s for s in sent if "FROM \"orders\"" in s or "FROM \"public\".\"orders\"" in s]
    assert len(reads) == 1, sent
    sql = reads[0]
    assert sql.startswith('SELECT "id", "note" FROM "public"."orders" WHERE'), "only the columns needed are read"
    assert "\"region\" = 'EMEA'" in sql and "\"amount\" >= 90" in sql, sql
    assert "LIKE" not in sql, "LIKE depends on the collation: DataFusion evaluates it"
    with gateway.client() as c:
        before = len(pg.statements())
        assert read(c, "sales", "orders", columns=["id"], limit=7).num_rows == 7
        sent = pg.statements()[before:]
    assert any(s.startswith('SELECT "id" FROM "public"."orders"') and s.endswith("LIMIT 7") for s in sent), sent


def test_order_comparisons_on_text_stay_in_datafusion(gateway, pg):
    with gateway.client() as c:
        before = len(pg.statements())
        got = read(c, "sales", "orders", filter="note < 'n2' AND id <= 30")
        sent = pg.statements()[before:]
    assert sorted(got.column("id").to_pylist()) == sorted(i for i in range(1, 31) if f"n{i}" < "n2")
    sql = next(s for s in sent if "orders" in s)
    assert "\"id\" <= 30" in sql and "note\" <" not in sql, sql


def test_tls_to_the_database_checks_its_certificate(gateway):
    with gateway.client() as c:
        assert read(c, "sales", "orders_tls").num_rows == 1000
        with pytest.raises(flight.FlightUnavailableError) as e:
            read(c, "sales", "orders_untrusted")
        assert "database `untrusted_db`" in str(e.value), str(e.value)


def test_a_read_only_query_binding(gateway, pg):
    with gateway.client() as c:
        t = read(c, "sales", "emea", filter="id <= 10")
    assert sorted(zip(t.column("id").to_pylist(), t.column("doubled").to_pylist())) == \
        [(i, (i % 100) * 2) for i in range(2, 11, 2)]
    assert not any("-- ours" in s for s in pg.statements()), "the query is re-printed, comments dropped"


def test_a_split_read_runs_one_statement_per_range(gateway, pg):
    with gateway.client() as c:
        before = len(pg.statements())
        t = read(c, "sales", "orders_split")
        sent = pg.statements()[before:]
    ids = t.column("id").to_pylist()
    assert len(ids) == 1000 and len(set(ids)) == 1000
    ranges = [s for s in sent if s.startswith('SELECT "id", "region", "amount", "note" FROM "orders" WHERE')]
    assert len(ranges) == 4, sent
    assert sum('"id" IS NULL' in s for s in ranges) == 1, "NULLs are read by the first range only"


def test_shards_of_a_table_split_by_its_key_take_every_row_once(gateway):
    """A table is not files: `"shards": N` splits it by the hash of the contract's primary key."""
    def sharded(c, name, n, **extra):
        query = json.dumps({"product": f"sales/{name}", "shards": n, **extra})
        return c.get_flight_info(flight.FlightDescriptor.for_command(query))

    with gateway.client() as c:
        info = sharded(c, "orders_keyed", 4)
        assert len(info.endpoints) == 4
        parts = [c.do_get(e.ticket).read_all() for e in info.endpoints]
        ids = [i for p in parts for i in p.column("id").to_pylist()]
        assert sorted(ids) == list(range(1, 1001)), "every row exactly once"
        assert all(p.num_rows > 150 for p in parts), [p.num_rows for p in parts]
        # The same key goes to the same shard on every read, and a seed orders the endpoints.
        again = [set(c.do_get(e.ticket).read_all().column("id").to_pylist()) for e in info.endpoints]
        assert again == [set(p.column("id").to_pylist()) for p in parts]
        first = [set(c.do_get(e.ticket).read_all().column("id").to_pylist())
                 for e in sharded(c, "orders_keyed", 4, shuffle_seed=7).endpoints]
        second = [set(c.do_get(e.ticket).read_all().column("id").to_pylist())
                  for e in sharded(c, "orders_keyed", 4, shuffle_seed=7).endpoints]
        assert first == second and sorted(map(min, first)) == sorted(map(min, again))
        # Filters and columns apply within each shard.
        part = c.do_get(sharded(c, "orders_keyed", 2, columns=["amount"], filter="region = 'EMEA'")
                        .endpoints[0].ticket).read_all()
        assert part.column_names == ["amount"] and 0 < part.num_rows < 500
        # Rows from a database come in no fixed order: a key shard is not resumed part-way.
        resume = flight.FlightCallOptions(headers=[(b"x-meshgate-offset", b"10")])
        with pytest.raises(pa.ArrowInvalid, match="no fixed order; read the shard again from the start"):
            c.do_get(info.endpoints[0].ticket, resume).read_all()
        # Without a declared key there is nothing to split by.
        with pytest.raises(pa.ArrowInvalid, match="declares no primary key"):
            sharded(c, "orders", 2)


def test_unmappable_type_and_closed_database_are_clear_and_isolated(gateway):
    with gateway.client() as c:
        with pytest.raises(flight.FlightUnavailableError) as e:
            read(c, "sales", "down")
        message = str(e.value)
        assert "database `down_db`" in message and "cannot be reached" in message, message
        assert "127.0.0.1" not in message and "reader" not in message
        assert read(c, "sales", "orders", limit=3).num_rows == 3
        assert read(c, "files", "local").num_rows == 10
        with pytest.raises(flight.FlightUnavailableError) as e:
            read(c, "other", "peek")
        h = health(c)
        assert "not open to domain `other`" in json.dumps(h["other/peek"])
        assert h["sales/orders"]["status"] == "available"
        assert READER_PASSWORD not in json.dumps(h)
        # A type meshgate cannot map is refused at load, naming the column and the fix.
        with pytest.raises(flight.FlightUnavailableError) as e:
            read(c, "sales", "priced")
        assert "`price`" in str(e.value) and "money" in str(e.value) and "::" in str(e.value), str(e.value)


def test_a_large_table_streams_with_bounded_memory(gateway):
    def peak_rss_kib() -> int:
        status = Path(f"/proc/{gateway.proc.pid}/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1])

    before = peak_rss_kib()
    rows = 0
    streamed = 0
    with gateway.client() as c:
        info = c.get_flight_info(flight.FlightDescriptor.for_path("sales", "big"))
        for endpoint in info.endpoints:
            reader = c.do_get(endpoint.ticket)
            for chunk in reader:
                rows += chunk.data.num_rows
                streamed += chunk.data.nbytes
    growth_mib = (peak_rss_kib() - before) / 1024
    assert rows == 1_000_000
    assert streamed > 200 * 2**20
    assert growth_mib < streamed / 2**20 / 2, f"peak memory grew {growth_mib:.0f} MiB for {streamed / 2**20:.0f} MiB"


def test_stopped_mid_stream_then_restarted(gateway, pg):
    with gateway.client() as c:
        info = c.get_flight_info(flight.FlightDescriptor.for_path("sales", "big"))
        reader = c.do_get(info.endpoints[0].ticket)
        first = reader.read_chunk()
        assert first.data.num_rows > 0
        pg.stop("immediate")
        try:
            with pytest.raises(flight.FlightUnavailableError) as e:
                for _ in reader:
                    pass
            assert "127.0.0.1" not in str(e.value) and "reader" not in str(e.value), str(e.value)
            with pytest.raises(flight.FlightUnavailableError):
                read(c, "sales", "orders")
            assert read(c, "files", "local").num_rows == 10, "other products are unaffected"
        finally:
            pg.start()
        assert read(c, "sales", "orders").num_rows == 1000, "served again once the database is back"


def test_stopped_at_start_recovers_when_the_database_returns(pg, tmp_path):
    mesh, stores = write_mesh(tmp_path, pg)
    pg.stop("fast")
    try:
        server = Server(mesh, "--stores", str(stores), "--no-watch", "--retry-interval", "1s")
    finally:
        pg.start()
    try:
        with server.client() as c:
            assert read(c, "files", "local").num_rows == 10
            # The gateway retries products whose storage was down when they were opened.
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert read(c, "sales", "orders").num_rows == 1000
                    break
                except flight.FlightUnavailableError as e:
                    assert "sales_db" in str(e) or "unavailable" in str(e), str(e)
                    if time.monotonic() > deadline:
                        raise
                    threading.Event().wait(0.5)
    finally:
        server.stop()
