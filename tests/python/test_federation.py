"""Federation: two gateways on 127.0.0.1, the second ("edge") serving products of the first
("hq") through the `flight` adapter, with its own governance applied on top. `sales/orders`
forwards the caller's token (hq's policies decide for the caller); `logistics/warehouses` reads
with a service token and names the caller, which hq writes into its audit log."""

import json
import shutil
import subprocess

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import BIN, Server


def login(server, user):
    client = server.client()
    header = client.authenticate_basic_token(user, f"{user}-dev-password")
    return client, flight.FlightCallOptions(headers=[header])


def read(client, options, *path, **query):
    if query:
        d = flight.FlightDescriptor.for_command(json.dumps({"product": "/".join(path), **query}))
    else:
        d = flight.FlightDescriptor.for_path(*path)
    info = client.get_flight_info(d, options=options)
    return pa.concat_tables([client.do_get(e.ticket, options=options).read_all() for e in info.endpoints])


def rebind(contract, binding: str):
    text = contract.read_text()
    start = text.index("customProperties:")
    contract.write_text(text[:start] + f"customProperties:\n  - property: meshgate.binding\n    value: {binding}\n")


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    home = tmp_path_factory.mktemp("federation")
    hq = Server(None, cwd=home, secure=True)
    try:
        token = subprocess.run(
            [str(BIN), "token", "issue", "--sub", "edge-gateway", "--roles", "analyst", "--attr", "region=EMEA"],
            cwd=home, check=True, capture_output=True, text=True,
        ).stdout.strip()
        (home / "edge-token").write_text(token + "\n")
        edge_mesh = home / "edge-mesh"
        shutil.copytree(home / "mesh", edge_mesh)
        rebind(edge_mesh / "sales" / "orders" / "v1.odcs.yaml",
               json.dumps({"adapter": "flight", "server": "hq_forward", "product": "sales/orders"}))
        rebind(edge_mesh / "logistics" / "warehouses" / "v1.odcs.yaml",
               json.dumps({"adapter": "flight", "server": "hq_service", "product": "logistics/warehouses"}))
        stores = home / "edge-stores.yaml"
        base = {"url": f"grpc://{hq.addr}", "token": {"file": str(home / "edge-token")}}
        stores.write_text(json.dumps({"flight": [
            dict(base, name="hq_forward", identity="forward"),
            dict(base, name="hq_service", identity="service"),
        ]}))
        edge = Server(edge_mesh, "--auth", str(home / ".meshgate" / "auth.yaml"), "--audit-log",
                      str(home / "edge-audit"), "--stores", str(stores), "--no-watch", cwd=home, secure=True)
        edge.home = home
        yield hq, edge
        edge.stop()
    finally:
        hq.stop()


def test_forwarded_identity_gets_the_same_rows_as_reading_hq_directly(gateways):
    hq, edge = gateways
    for user in ["alice", "bob"]:
        direct_client, direct_opts = login(hq, user)
        via_client, via_opts = login(edge, user)
        with direct_client, via_client:
            direct = read(direct_client, direct_opts, "sales", "orders").sort_by("order_id")
            via = read(via_client, via_opts, "sales", "orders").sort_by("order_id")
        assert via.num_rows == direct.num_rows > 0, user
        assert via.column_names == direct.column_names
        assert via.equals(direct.cast(via.schema)), user
        assert len(set(via.column("region").to_pylist())) == 1, "the row filter of the region applies"


def test_filters_limits_and_sql_reach_through(gateways):
    _, edge = gateways
    c, opts = login(edge, "alice")
    with c:
        t = read(c, opts, "sales", "orders", columns=["order_id", "status"], filter="status = 'shipped'", limit=5)
        assert t.num_rows == 5 and t.column_names == ["order_id", "status"]
        assert set(t.column("status").to_pylist()) == {"shipped"}
    # The projection reached hq: its record of alice's read names the asked columns and the
    # one the edge's own row filter needs (`region`), not the others.
    reads = [r for r in hq_audit(edge) if (r.get("actor") or {}).get("sub") == "alice" and r["rpc"] == "DoGet"]
    columns = set(reads[-1]["resource"]["columns"])
    assert {"order_id", "status"} <= columns <= {"order_id", "status", "region"}, columns


def hq_audit(edge) -> list[dict]:
    records = []
    for f in sorted((edge.home / ".meshgate" / "audit").rglob("*.jsonl")):
        records += [json.loads(l) for l in f.read_text(errors="replace").splitlines() if l.startswith("{")]
    return records


def test_edge_governance_applies_on_top(gateways):
    _, edge = gateways
    c, opts = login(edge, "pat")
    with c:
        with pytest.raises(flight.FlightUnauthorizedError, match="may not read `sales/orders`"):
            read(c, opts, "sales", "orders")
    assert not [r for r in hq_audit(edge) if (r.get("actor") or {}).get("sub") == "pat"], \
        "the edge refused before asking hq"


def test_service_identity_names_the_caller_in_the_remote_audit(gateways):
    hq, edge = gateways
    c, opts = login(edge, "carol")
    with c:
        assert read(c, opts, "logistics", "warehouses").num_rows > 0
    served = [r for r in hq_audit(edge) if r.get("client", {}).get("on_behalf_of") == "carol"]
    assert served, "hq recorded the read for carol"
    assert {r["actor"]["sub"] for r in served} == {"edge-gateway"}, "read with the service token"
