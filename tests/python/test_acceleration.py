"""In-memory acceleration: a contract's `meshgate.acceleration` keeps an Arrow copy of the
product in memory, refreshed when its data changes; reads are served from the copy, governed
exactly as direct reads; a failed refresh keeps the last good copy serving and says so."""

import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.flight as flight
import pytest
import requests

from conftest import Server

PRODUCT = """apiVersion: v1.0.0
kind: DataProduct
id: urn:test:lab:people
name: people
domain: lab
status: active
outputPorts:
  - name: v1
    version: 1.0.0
    contractId: urn:test:lab:people:v1
"""

CONTRACT = """apiVersion: v3.1.0
kind: DataContract
id: urn:test:lab:people:v1
name: people
version: 1.0.0
status: active
domain: lab
schema:
  - name: people
    properties:
      - name: person_id
        logicalType: integer
        primaryKey: true
      - name: email
        logicalType: string
        classification: pii
customProperties:
  - property: meshgate.binding
    value: {"adapter": "files", "location": "data/", "format": "csv"}
  - property: meshgate.acceleration
    value: {engine: memory, refresh: 1h, maxBytes: 1MiB}
"""


def people(ids):
    return pa.table({"person_id": pa.array(ids, pa.int64()), "email": [f"p{i}@example.com" for i in ids]})


@pytest.fixture()
def lab(tmp_path):
    d = tmp_path / "mesh" / "lab" / "people"
    (d / "data").mkdir(parents=True)
    (d / "product.odps.yaml").write_text(PRODUCT)
    (d / "v1.odcs.yaml").write_text(CONTRACT)
    pacsv.write_csv(people(range(10)), d / "data" / "a.csv")
    # Data changes are looked for every second.
    s = Server(None, "--quality-interval", "1s", cwd=tmp_path, secure=True)
    s.data = d / "data"
    yield s
    s.stop()


def refreshed(n):
    return lambda records: sum(r.get("port") == "lab/people/v1" for r in records) >= n


def read(client, call):
    info = client.get_flight_info(flight.FlightDescriptor.for_path("lab", "people"), call)
    return info, client.do_get(info.endpoints[0].ticket, call).read_all()


def test_reads_are_served_from_memory_governed_and_refreshed_on_change(lab):
    lab.wait_log("acceleration refreshed", refreshed(1))
    c = lab.client()
    alice = flight.FlightCallOptions(headers=[c.authenticate_basic_token("alice", "alice-dev-password")])
    carol = flight.FlightCallOptions(headers=[c.authenticate_basic_token("carol", "carol-dev-password")])
    info, got = read(c, alice)
    assert got.num_rows == 10
    # Governed as a direct read: pii masked for an analyst, clear for the privacy officer.
    assert set(got.column("email").to_pylist()) == {"***"}
    assert read(c, carol)[1].column("email").to_pylist()[0] == "p0@example.com"
    status = json.loads(info.app_metadata)["acceleration"]
    assert status["loaded"] and status["rows"] == 10 and status["refreshed"] and status["bytes"] > 0

    # The data turns unreadable: the refresh fails, the last good copy keeps serving, health
    # says why.
    (lab.data / "a.csv").write_text("person_id,email\nnot-a-number,x\n")
    lab.wait_log("acceleration refresh failed; the last good copy keeps serving",
                 lambda rs: any(r.get("port") == "lab/people/v1" for r in rs))
    assert read(c, alice)[1].num_rows == 10
    health = requests.get(f"{lab.http}/api/health",
                          headers={"authorization": c.authenticate_basic_token("olga", "olga-dev-password")[1].decode()},
                          timeout=30).json()
    [port] = [p for prod in health["products"] if prod["product"] == "lab/people" for p in prod["ports"]]
    assert port["acceleration"]["last_error"]["message"], port

    # New data: the next look refreshes the copy, swapped in whole.
    (lab.data / "a.csv").unlink()
    pacsv.write_csv(people(range(100, 125)), lab.data / "b.csv")
    lab.wait_log("acceleration refreshed", refreshed(2))
    _, got = read(c, carol)
    assert sorted(got.column("person_id").to_pylist()) == list(range(100, 125))
    describe = json.loads(list(c.do_action(flight.Action("describe", b"lab/people"), carol))[0].body.to_pybytes())
    assert describe["contract"]["acceleration"]["rows"] == 25
    assert describe["contract"]["acceleration"]["last_error"] is None

    # The copy's size is a metric.
    olga = c.authenticate_basic_token("olga", "olga-dev-password")[1].decode()
    metrics = requests.get(f"{lab.http}/metrics", headers={"authorization": olga}, timeout=30).text
    assert 'meshgate_acceleration_rows{product="lab/people",port="v1"} 25' in metrics
    assert 'meshgate_acceleration_bytes{product="lab/people",port="v1"}' in metrics

    # An in-memory copy is not files: shards split it by the contract's key, each row once.
    query = json.dumps({"product": "lab/people", "shards": 3})
    info = c.get_flight_info(flight.FlightDescriptor.for_command(query), carol)
    parts = [c.do_get(e.ticket, carol).read_all() for e in info.endpoints]
    assert sorted(i for p in parts for i in p.column("person_id").to_pylist()) == list(range(100, 125))
    assert sum(1 for p in parts if p.num_rows) > 1


def test_a_wrong_acceleration_is_a_load_error(tmp_path, sample_mesh):
    import shutil
    import subprocess
    from conftest import BIN
    mesh = tmp_path / "mesh"
    shutil.copytree(sample_mesh, mesh)
    contract = mesh / "logistics" / "warehouses" / "v1.odcs.yaml"
    contract.write_text(contract.read_text() + """  - property: meshgate.acceleration
    value: {engine: disk, refresh: 1m, maxBytes: 1MiB}
""")
    out = subprocess.run([str(BIN), "check", "--mesh", str(mesh)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "engine `disk` is not offered; use `memory`" in out.stdout + out.stderr
