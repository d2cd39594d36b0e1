"""Sharded reads, as ML training jobs use them: `"shards": N` in a JSON read gives N endpoints
that together return every row exactly once, each pinned to the files GetFlightInfo assigned it."""

import json
import shutil

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import Server


def sharded(client, product, n, **extra):
    query = {"product": product, "shards": n, **extra}
    return client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(query)))


def whole(client, product):
    info = client.get_flight_info(flight.FlightDescriptor.for_path(*product.split("/")))
    return client.do_get(info.endpoints[0].ticket).read_all()


def rows(table):
    """Every row as a tuple, sorted: equal lists mean the same rows, each as often."""
    return sorted(zip(*[table.column(c).to_pylist() for c in table.column_names]), key=repr)


@pytest.mark.parametrize("product", ["sales/orders", "customers/profiles", "logistics/shipments",
                                     "sales/daily_revenue"])
@pytest.mark.parametrize("n", [2, 3, 8])
def test_shards_cover_every_row_exactly_once(client, product, n):
    expected = whole(client, product)
    info = sharded(client, product, n)
    assert len(info.endpoints) == n
    parts = [client.do_get(e.ticket).read_all() for e in info.endpoints]
    for part in parts:
        assert part.schema.equals(expected.schema)
    assert rows(pa.concat_tables(parts)) == rows(expected)
    if product == "sales/orders":
        # Several files: the work is really split.
        assert sum(1 for p in parts if p.num_rows) > 1


def test_a_shard_reads_the_files_it_was_assigned(tmp_path, sample_mesh):
    mesh = tmp_path / "mesh"
    shutil.copytree(sample_mesh, mesh)
    s = Server(mesh)
    try:
        with s.client() as c:
            before = whole(c, "sales/orders")
            info = sharded(c, "sales/orders", 4)
            # A producer's late file lands between GetFlightInfo and DoGet.
            region = sorted((mesh / "sales" / "orders" / "data").glob("region=*"))[0]
            source = sorted(region.glob("*.parquet"))[0]
            late = region / "late-arrival.parquet"
            shutil.copy(source, late)
            got = pa.concat_tables([c.do_get(e.ticket).read_all() for e in info.endpoints])
            assert rows(got) == rows(before)
            # A new GetFlightInfo assigns it.
            after = sharded(c, "sales/orders", 4)
            got = pa.concat_tables([c.do_get(e.ticket).read_all() for e in after.endpoints])
            assert got.num_rows > before.num_rows
            # A pinned file that is gone fails its endpoint instead of returning other rows.
            late.unlink()
            with pytest.raises(pa.ArrowException, match="call GetFlightInfo again"):
                for e in after.endpoints:
                    c.do_get(e.ticket).read_all()
    finally:
        s.stop()


@pytest.mark.parametrize("query,message", [
    ({"shards": 0}, "ask for 1 to 256"),
    ({"shards": 1000}, "ask for 1 to 256"),
    ({"shards": 4, "limit": 10}, "cannot be split across"),
    ({"shuffle_seed": 3, "limit": 10}, "not reproducible"),
])
def test_bad_shard_requests_say_what_to_fix(client, query, message):
    with pytest.raises(pa.ArrowInvalid, match=message):
        client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps({"product": "sales/orders", **query})))


def test_a_ticket_for_another_users_shard_is_refused(tmp_path):
    s = Server(None, cwd=tmp_path, secure=True)
    try:
        with s.client() as c:
            alice = flight.FlightCallOptions(headers=[c.authenticate_basic_token("alice", "alice-dev-password")])
            bob = flight.FlightCallOptions(headers=[c.authenticate_basic_token("bob", "bob-dev-password")])
            query = json.dumps({"product": "sales/orders", "shards": 3})
            info = c.get_flight_info(flight.FlightDescriptor.for_command(query), alice)
            mine = pa.concat_tables([c.do_get(e.ticket, alice).read_all() for e in info.endpoints])
            assert mine.num_rows > 0 and set(mine.column("region").to_pylist()) == {"EMEA"}
            with pytest.raises(flight.FlightUnauthorizedError, match="another principal"):
                c.do_get(info.endpoints[1].ticket, bob).read_all()
    finally:
        s.stop()


def test_a_worker_resumes_its_shard_at_a_row_offset(client):
    info = sharded(client, "sales/orders", 3)
    ticket = info.endpoints[0].ticket
    first = client.do_get(ticket).read_all()
    # A shard's rows come in the same order every time: a resumed read continues exactly.
    assert client.do_get(ticket).read_all().equals(first)
    for offset in [0, 1, first.num_rows // 2, first.num_rows]:
        options = flight.FlightCallOptions(headers=[(b"x-meshgate-offset", str(offset).encode())])
        rest = client.do_get(ticket, options).read_all()
        assert rest.equals(first.slice(offset)), offset


def test_an_offset_needs_a_shard_and_a_number(client):
    info = client.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders"))
    options = flight.FlightCallOptions(headers=[(b"x-meshgate-offset", b"10")])
    with pytest.raises(pa.ArrowInvalid, match="shards"):
        client.do_get(info.endpoints[0].ticket, options).read_all()
    # A Flight SQL catalog answer (its ticket is the command) is not resumed either.
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandGetCatalogs"
    catalogs = client.get_flight_info(flight.FlightDescriptor.for_command(b"\x0a" + bytes([len(url)]) + url))
    with pytest.raises(pa.ArrowInvalid, match="resumes product shards only"):
        client.do_get(catalogs.endpoints[0].ticket, options).read_all()
    options = flight.FlightCallOptions(headers=[(b"x-meshgate-offset", b"-3")])
    with pytest.raises(pa.ArrowInvalid, match="rows already read"):
        client.do_get(sharded(client, "sales/orders", 2).endpoints[0].ticket, options).read_all()


def test_a_shuffle_seed_gives_a_reproducible_order(client):
    def epoch(seed, n=4):
        info = sharded(client, "sales/orders", n, shuffle_seed=seed)
        return [client.do_get(e.ticket).read_all().column("order_id").to_pylist() for e in info.endpoints]

    first = epoch(42)
    assert epoch(42) == first
    assert sorted(sum(first, [])) == sorted(whole(client, "sales/orders").column("order_id").to_pylist())
    assert epoch(43) != first
    # One shard with a seed is one reproducible stream.
    assert epoch(5, 1) == epoch(5, 1)


def test_endpoints_name_the_advertised_nodes_round_robin(sample_mesh):
    nodes = ["grpc://127.0.0.1:1", "grpc://127.0.0.1:2"]
    s = Server(sample_mesh, "--no-watch", "--advertise", ",".join(nodes))
    try:
        with s.client() as c:
            info = sharded(c, "sales/orders", 4)
            at = [[loc.uri.decode() for loc in e.locations] for e in info.endpoints]
            assert sorted(a[0] for a in at) == sorted(nodes * 2) and all(len(a) == 1 for a in at), at
            assert at[0][0] != at[1][0], "consecutive shards go to different nodes"
            # The tickets are the gateway's own: any node (here this one) redeems them.
            assert sum(c.do_get(e.ticket).read_all().num_rows for e in info.endpoints) == whole(c, "sales/orders").num_rows
    finally:
        s.stop()
    one = Server(sample_mesh, "--no-watch", "--advertise", "grpc://127.0.0.1:1")
    try:
        with one.client() as c:
            [e] = c.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders")).endpoints
            assert [loc.uri.decode() for loc in e.locations] == ["arrow-flight-reuse-connection://?"]
            assert c.do_get(e.ticket).read_all().num_rows > 0
    finally:
        one.stop()


def test_a_nodes_file_sends_a_products_reads_to_its_own_nodes(tmp_path, sample_mesh):
    import adbc_driver_flightsql.dbapi as flight_sql
    placed = tmp_path / "nodes.yaml"
    placed.write_text("products:\n"
                      "  sales/orders: [grpc://127.0.0.1:11, grpc://127.0.0.1:12]\n"
                      "  logistics: [grpc://127.0.0.1:21]\n")
    mesh_nodes = ["grpc://127.0.0.1:1", "grpc://127.0.0.1:2"]
    s = Server(sample_mesh, "--no-watch", "--advertise", ",".join(mesh_nodes), "--nodes", str(placed))
    try:
        with s.client() as c:
            def at(product, n):
                return [[loc.uri.decode() for loc in e.locations] for e in sharded(c, product, n).endpoints]

            orders = at("sales/orders", 4)
            assert sorted(a[0] for a in orders) == sorted(["grpc://127.0.0.1:11", "grpc://127.0.0.1:12"] * 2), orders
            assert at("logistics/shipments", 2) == [["grpc://127.0.0.1:21"]] * 2, "the domain's one node, named"
            assert {a[0] for a in at("customers/profiles", 2)} == set(mesh_nodes), "no list of its own: the mesh's"
            info = sharded(c, "sales/orders", 2)
            assert sum(c.do_get(e.ticket).read_all().num_rows for e in info.endpoints) == whole(c, "sales/orders").num_rows
        # A statement is redeemed where it was asked: ADBC follows locations, and these nodes do
        # not exist.
        with flight_sql.connect(f"grpc://{s.addr}") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM sales.orders")
            assert cur.fetch_arrow_table().column("n")[0].as_py() > 0
    finally:
        s.stop()


def test_a_wrong_nodes_file_stops_the_gateway_naming_the_entry(tmp_path, sample_mesh):
    import subprocess
    from conftest import BIN
    placed = tmp_path / "nodes.yaml"
    placed.write_text("products:\n  sales/../x: [grpc://127.0.0.1:11]\n")
    out = subprocess.run([str(BIN), "serve", "--mesh", str(sample_mesh), "--insecure-no-auth", "--listen", "127.0.0.1:0",
                          "--http-listen", "off", "--nodes", str(placed)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "`sales/../x` is not a `domain` or a `domain/product`" in out.stderr, out.stderr


def test_a_tls_gateway_refuses_to_advertise_plain_grpc_nodes(tmp_path, sample_mesh):
    import subprocess
    from conftest import BIN, REPO
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(REPO / "certs" / "make-dev-certs.sh"), str(certs)], check=True, capture_output=True)
    out = subprocess.run([str(BIN), "serve", "--mesh", str(sample_mesh), "--insecure-no-auth", "--listen", "127.0.0.1:0",
                          "--http-listen", "off", "--tls-cert", str(certs / "server.pem"),
                          "--tls-key", str(certs / "server.key"), "--advertise", "grpc://gw-1:8815"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "is plain gRPC but this gateway serves TLS" in out.stderr, out.stderr
