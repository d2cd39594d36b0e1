"""What a pandas user does with pyarrow.flight, against the sample mesh."""

import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.flight as flight
import pyarrow.ipc as ipc
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

from conftest import Server

# product -> (how to read its source files with pyarrow, primary key)
SOURCES = {
    "sales/orders": (lambda d: ds.dataset(d / "data", format="parquet", partitioning="hive").to_table(), "order_id"),
    "sales/daily_revenue": (lambda d: ipc.open_file(d / "data" / "daily_revenue.arrow").read_all(), ["day", "region"]),
    "customers/profiles": (lambda d: pacsv.read_csv(d / "data" / "profiles.csv"), "customer_id"),
    "logistics/shipments": (lambda d: pa.concat_tables(pajson.read_json(f) for f in sorted((d / "data").glob("*.json"))), "shipment_id"),
    "logistics/warehouses": (lambda d: pacsv.read_csv(d / "data" / "warehouses.csv"), "warehouse_id"),
}


def checksum(df: pd.DataFrame, key) -> int:
    """Order-independent checksum over every value, compared as text."""
    text = df.sort_values(key).reset_index(drop=True).astype(str)
    return int(pd.util.hash_pandas_object(text, index=False).sum())


def read(client, info) -> pa.Table:
    return pa.concat_tables([client.do_get(e.ticket).read_all() for e in info.endpoints])


def test_lists_every_product(client):
    paths = sorted("/".join(p.decode() for p in f.descriptor.path) for f in client.list_flights())
    assert paths == [f"{p}/v1" for p in sorted(SOURCES)]
    assert [f.descriptor.path[1] for f in client.list_flights(b"tag:pii")] == [b"profiles"]


@pytest.mark.parametrize("product", sorted(SOURCES))
def test_every_product_reads_into_pandas_like_its_source(client, sample_mesh, product):
    domain, name = product.split("/")
    info = client.get_flight_info(flight.FlightDescriptor.for_path(domain, name))
    served = read(client, info).to_pandas()
    load, key = SOURCES[product]
    source = load(sample_mesh / domain / name).to_pandas()[list(served.columns)]
    assert len(served) == len(source)
    if info.total_records >= 0:
        assert info.total_records == len(served)
    assert checksum(served, key) == checksum(source, key)


def test_projected_filtered_read(client, sample_mesh):
    query = {"product": "sales/orders", "columns": ["order_id", "amount"], "filter": "region = 'APAC' AND amount >= 250", "limit": 1_000_000}
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(query)))
    served = read(client, info).to_pandas()
    assert list(served.columns) == ["order_id", "amount"]
    source = SOURCES["sales/orders"][0](sample_mesh / "sales" / "orders").to_pandas()
    expected = source[(source.region == "APAC") & (source.amount >= 250)][["order_id", "amount"]]
    assert len(served) == len(expected) > 0
    assert checksum(served, "order_id") == checksum(expected, "order_id")

    limited = dict(query, limit=7)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(limited)))
    assert read(client, info).num_rows == 7


def test_get_schema_carries_the_contract(client):
    schema = client.get_schema(flight.FlightDescriptor.for_path("customers", "profiles")).schema
    assert schema.metadata[b"meshgate.contract_id"] == b"urn:meshgate:sample:customers:profiles:v1"
    assert schema.field("email").metadata[b"meshgate.classification"] == b"pii"
    cmd = json.dumps({"product": "customers/profiles", "columns": ["customer_id", "segment"]})
    schema = client.get_schema(flight.FlightDescriptor.for_command(cmd)).schema
    assert schema.names == ["customer_id", "segment"]


def test_describe(client):
    [result] = list(client.do_action(flight.Action("describe", b"logistics/shipments")))
    doc = json.loads(result.body.to_pybytes())
    assert doc["product"]["owner"] == "logistics-platform"
    assert doc["contract"]["version"] == "1.0.0"
    assert [c["name"] for c in doc["contract"]["columns"]][:2] == ["shipment_id", "order_id"]
    assert "meshgate.binding" not in json.dumps(doc)


def test_unknown_names_are_not_found(client):
    with pytest.raises(KeyError, match="domains: `customers`, `logistics`, `sales`"):
        client.get_flight_info(flight.FlightDescriptor.for_path("hr", "people"))
    with pytest.raises(KeyError, match="products: `daily_revenue`, `orders`"):
        client.get_flight_info(flight.FlightDescriptor.for_path("sales", "refunds"))
    with pytest.raises(KeyError, match="ports: `v1 \\(1.0.0\\)`"):
        client.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders", "v7"))


@pytest.mark.parametrize(
    "descriptor, hint",
    [
        (flight.FlightDescriptor.for_path("..", "..", "etc"), "not a valid name"),
        (flight.FlightDescriptor.for_path("sales", "../customers"), "not a valid name"),
        (flight.FlightDescriptor.for_command(b"SELECT * FROM orders"), "valid meshgate query"),
        (flight.FlightDescriptor.for_command(json.dumps({"product": "sales/orders", "filter": "no_such > 1"})), "no_such"),
        (flight.FlightDescriptor.for_command(json.dumps({"product": "sales/orders", "filter": "order_id IN (SELECT order_id FROM orders)"})), "subqueries"),
        (flight.FlightDescriptor.for_command(json.dumps({"product": "sales/orders", "columns": ["ssn"]})), "no column `ssn`"),
    ],
)
def test_bad_requests_are_invalid_arguments(client, descriptor, hint):
    with pytest.raises(pa.ArrowInvalid, match=hint):
        client.get_flight_info(descriptor)


def test_tampered_ticket_is_refused(client):
    info = client.get_flight_info(flight.FlightDescriptor.for_path("logistics", "warehouses"))
    ticket = bytearray(info.endpoints[0].ticket.ticket)
    ticket[len(ticket) // 2] ^= 0x10
    with pytest.raises((flight.FlightUnauthenticatedError, pa.ArrowInvalid)):
        client.do_get(flight.Ticket(bytes(ticket))).read_all()
    with pytest.raises(pa.ArrowInvalid, match="malformed"):
        client.do_get(flight.Ticket(b"\x00\x01garbage")).read_all()


def test_broken_manifest_and_vanished_data(tmp_path, sample_mesh):
    """A broken product is refused with its reason; vanished data is UNAVAILABLE; others serve."""
    mesh = tmp_path / "mesh"
    shutil.copytree(sample_mesh, mesh)
    (mesh / "sales" / "orders" / "v1.odcs.yaml").write_text("apiVersion: v3.1.0\nkind: DataContract\n")
    server = Server(mesh, "--no-watch")
    try:
        with server.client() as c:
            with pytest.raises(flight.FlightUnavailableError, match="v1.odcs.yaml"):
                c.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders"))
            assert len(list(c.list_flights())) == 4
            info = c.get_flight_info(flight.FlightDescriptor.for_path("logistics", "warehouses"))
            (mesh / "logistics" / "warehouses" / "data" / "warehouses.csv").unlink()
            with pytest.raises(flight.FlightUnavailableError) as e:
                c.do_get(info.endpoints[0].ticket).read_all()
            assert str(mesh) not in str(e.value)
            info = c.get_flight_info(flight.FlightDescriptor.for_path("sales", "daily_revenue"))
            assert c.do_get(info.endpoints[0].ticket).read_all().num_rows > 0
    finally:
        server.stop()


def test_view_typed_files_reach_pyarrow_as_classic_strings(tmp_path):
    """Arrow-native writers (tpchgen-cli, pyarrow, polars) store `string_view` columns; every
    client must receive plain `string`, from Parquet and from Arrow IPC alike."""
    schema = pa.schema([("id", pa.int64(), False), ("note", pa.string_view())])
    table = pa.table({"id": list(range(5000)), "note": [f"a note longer than twelve bytes {i}" for i in range(5000)]},
                     schema=schema)
    mesh = tmp_path / "mesh"
    for name, fmt in [("pq", "parquet"), ("ipc", "arrow")]:
        d = mesh / "lab" / name
        (d / "data").mkdir(parents=True)
        if fmt == "arrow":
            with ipc.new_file(str(d / "data" / "part.arrow"), schema) as w:
                w.write_table(table, max_chunksize=1000)
        else:
            pq.write_table(table, d / "data" / "part.parquet")
        (d / "product.odps.yaml").write_text(
            f"apiVersion: v1.0.0\nkind: DataProduct\nid: {name}\nstatus: active\n"
            f"outputPorts:\n  - name: v1\n    version: 1.0.0\n    contractId: {name}-v1\n")
        (d / "v1.odcs.yaml").write_text(
            f"apiVersion: v3.1.0\nkind: DataContract\nid: {name}-v1\nversion: 1.0.0\nstatus: active\n"
            "schema:\n  - name: t\n    properties:\n"
            "      - name: id\n        logicalType: integer\n      - name: note\n        logicalType: string\n"
            f"customProperties:\n  - property: meshgate.binding\n    value: {{adapter: files, location: data/, format: {fmt}}}\n")
    server = Server(mesh, "--no-watch")
    try:
        with server.client() as c:
            for name in ["pq", "ipc"]:
                info = c.get_flight_info(flight.FlightDescriptor.for_path("lab", name))
                assert info.schema.field("note").type == pa.string(), name
                got = read(c, info)
                assert got.schema.field("note").type == pa.string(), name
                assert got.num_rows == 5000
                assert sorted(got.column("note").to_pylist()) == sorted(table.column("note").cast(pa.string()).to_pylist())
    finally:
        server.stop()


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_a_client_may_ask_for_compressed_streams(client, codec):
    descriptor = flight.FlightDescriptor.for_path("sales", "orders")
    info = client.get_flight_info(descriptor)
    plain = client.do_get(info.endpoints[0].ticket).read_all()
    options = flight.FlightCallOptions(headers=[(b"x-meshgate-compression", codec.encode())])
    compressed = client.do_get(info.endpoints[0].ticket, options).read_all()
    # Partitions are read in parallel: compare in one order.
    assert compressed.num_rows > 0 and compressed.sort_by("order_id").equals(plain.sort_by("order_id"))


def test_an_unknown_compression_is_refused_naming_the_choices(client):
    info = client.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders"))
    options = flight.FlightCallOptions(headers=[(b"x-meshgate-compression", b"gzip")])
    with pytest.raises(pa.ArrowInvalid, match="use lz4, zstd or none"):
        client.do_get(info.endpoints[0].ticket, options).read_all()


def test_a_read_may_carry_its_compression_in_the_ticket(client):
    plain = read(client, client.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders")))
    query = {"product": "sales/orders", "compression": "ZSTD"}
    info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(query)))
    assert read(client, info).sort_by("order_id").equals(plain.sort_by("order_id"))
    with pytest.raises(pa.ArrowInvalid, match="use lz4, zstd or none"):
        client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(dict(query, compression="gzip"))))
