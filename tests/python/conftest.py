"""Starts the real `meshgate` binary on 127.0.0.1:0 over a freshly written sample mesh."""

import json
import os
import subprocess
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("MESHGATE_BIN", REPO / "target" / "debug" / "meshgate"))


class Server:
    """A running gateway process and the address it bound."""

    def __init__(self, mesh: Path | None, *args: str, cwd: Path | None = None, secure: bool = False,
                 env: dict[str, str] | None = None):
        """Serves `mesh` without authentication, or (`mesh=None`, `secure=True`) the sample mesh
        the way `meshgate serve` does with no arguments: in `cwd`, authentication on. `env` adds
        to the environment the process inherits."""
        self.mesh = mesh
        command = [str(BIN), "--log-format", "json", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        if mesh is not None:
            command += ["--mesh", str(mesh)]
        if not secure:
            command.append("--insecure-no-auth")
        self.proc = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self.log = []
        # Notified at every log line the server writes after `listening` (see `wait_log`).
        self.logged = threading.Condition()
        # The server logs a `listening` record once bound: wait for that line, not for a time.
        for line in self.proc.stderr:
            self.log.append(line)
            record = json.loads(line)
            if record["fields"].get("message") == "listening":
                self.addr = record["fields"]["addr"]
                # The HTTP side port (probes, metrics, catalog), as a base URL.
                self.http = f"http://{record['fields']['http_addr']}"
                break
        else:
            raise RuntimeError("meshgate exited before listening:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            with self.logged:
                self.log.append(line)
                self.logged.notify_all()
        with self.logged:
            self.logged.notify_all()

    def records(self, message):
        """The fields of every JSON log record with `message` written so far."""
        with self.logged:
            lines = list(self.log)
        out = []
        for line in lines:
            try:
                fields = json.loads(line)["fields"]
            except (ValueError, KeyError):
                continue
            if fields.get("message") == message:
                out.append(fields)
        return out

    def wait_log(self, message, until, timeout=120):
        """Blocks until `until(records)` holds for the records with `message`, woken by each new
        log line (no polling); fails after `timeout` s or when the server exits."""
        with self.logged:
            done = self.logged.wait_for(
                lambda: until(self.records(message)) or self.proc.poll() is not None, timeout=timeout)
        found = self.records(message)
        assert done and until(found), f"no log records `{message}` as awaited; got {found}"
        return found

    def client(self) -> flight.FlightClient:
        return flight.connect(f"grpc://{self.addr}")

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=30) == 0, "graceful shutdown exits 0"


@pytest.fixture(scope="session")
def sample_mesh(tmp_path_factory) -> Path:
    mesh = tmp_path_factory.mktemp("mesh")
    subprocess.run([str(BIN), "sample", "write", str(mesh)], check=True, capture_output=True)
    return mesh


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """The sample mesh served as `meshgate serve` does with no arguments: authentication on."""
    home = tmp_path_factory.mktemp("home")
    s = Server(None, cwd=home, secure=True)
    s.home = home
    yield s
    s.stop()


@pytest.fixture(scope="session")
def server(sample_mesh):
    s = Server(sample_mesh)
    yield s
    s.stop()


@pytest.fixture()
def client(server) -> flight.FlightClient:
    with server.client() as c:
        yield c


def contract(domain, name, columns, binding, key=()):
    """An ODCS contract whose columns are `(name, logicalType or None)`, whose primary key is
    the columns named in `key`, and whose binding is `binding`."""
    props = "\n".join(f"      - name: {c}" + (f"\n        logicalType: {t}" if t else "")
                      + ("\n        primaryKey: true" if c in key else "") for c, t in columns)
    return f"""apiVersion: v3.1.0
kind: DataContract
id: urn:test:{domain}:{name}:v1
name: {name}
version: 1.0.0
status: active
domain: {domain}
schema:
  - name: {name}
    properties:
{props}
customProperties:
  - property: meshgate.binding
    value: {json.dumps(binding)}
"""


def product(mesh: Path, domain, name, columns, binding, key=()):
    """Writes a one-port product `domain/name` into `mesh` (see `contract`)."""
    d = mesh / domain / name
    d.mkdir(parents=True)
    (d / "product.odps.yaml").write_text(
        f"""apiVersion: v1.0.0
kind: DataProduct
id: urn:test:{domain}:{name}
name: {name}
domain: {domain}
status: active
outputPorts:
  - name: v1
    version: 1.0.0
    contractId: urn:test:{domain}:{name}:v1
"""
    )
    (d / "v1.odcs.yaml").write_text(contract(domain, name, columns, binding, key))


def read(client, *path, **query):
    """Every row of a product read by path, or by JSON command when `query` is given."""
    if query:
        desc = flight.FlightDescriptor.for_command(json.dumps({"product": "/".join(path), **query}))
    else:
        desc = flight.FlightDescriptor.for_path(*path)
    info = client.get_flight_info(desc)
    return pa.concat_tables([client.do_get(e.ticket).read_all() for e in info.endpoints])
