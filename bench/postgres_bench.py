"""TPC-H lineitem in PostgreSQL, read through meshgate and read directly, in one run
(`bash bench/run.sh postgres [SCALE]`).

The rows are what the tool writes: `tpchgen-cli csv` output, loaded unmodified with `COPY` into
a table typed as the TPC-H specification says (scale 1: 6,001,215 rows). PostgreSQL is a
throwaway server of its own on 127.0.0.1 (the tests' `pgserver`). Three readers, each timed over
the same rounds, median reported:

- meshgate, one stream: `pyarrow.flight` reads product `pg/lineitem` (a `table` binding);
- meshgate, split: product `pg/lineitem_split` (`split: {column: l_orderkey, parts: 4}`);
- the peer: `adbc_driver_postgresql` (`SELECT * FROM lineitem`, `fetch_arrow_table`), the
  fastest direct Arrow reader of PostgreSQL (binary COPY).

Printed: seconds, Mrows/s and the ratio to the peer; and meshgate's peak memory (VmHWM) over
the run next to the bytes streamed.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg_dbapi
import pyarrow.flight as flight

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))
from pgserver import ADMIN_PASSWORD, Postgres  # noqa: E402

from flight_bench import start  # noqa: E402  (one way to start a server and drain its log)

LINEITEM = """CREATE TABLE lineitem (
  l_orderkey bigint NOT NULL, l_partkey bigint NOT NULL, l_suppkey bigint NOT NULL,
  l_linenumber integer NOT NULL, l_quantity numeric(15,2) NOT NULL,
  l_extendedprice numeric(15,2) NOT NULL, l_discount numeric(15,2) NOT NULL,
  l_tax numeric(15,2) NOT NULL, l_returnflag char(1) NOT NULL, l_linestatus char(1) NOT NULL,
  l_shipdate date NOT NULL, l_commitdate date NOT NULL, l_receiptdate date NOT NULL,
  l_shipinstruct varchar(25) NOT NULL, l_shipmode varchar(10) NOT NULL,
  l_comment varchar(44) NOT NULL);
CREATE INDEX ON lineitem (l_orderkey);
"""


def csv_file(scale: str) -> Path:
    out = HERE / "data" / f"sf{scale}-csv"
    f = out / "lineitem.csv"
    if not f.exists():
        tpchgen = Path(sys.executable).with_name("tpchgen-cli")
        subprocess.run([str(tpchgen), "csv", "-s", scale, "--tables=lineitem", f"--output-dir={out}"], check=True)
    return f


def write_mesh(root: Path, port: int) -> tuple[Path, Path]:
    secret = root / "pw"
    secret.write_text(ADMIN_PASSWORD)
    stores = root / "stores.yaml"
    stores.write_text(json.dumps({"postgres": [{
        "name": "bench", "host": "127.0.0.1", "port": port, "database": "tpch", "user": "postgres",
        "password": {"file": str(secret)}, "sslMode": "disable"}]}))
    mesh = root / "mesh"
    columns = list(dict.fromkeys(re.findall(r"(l_\w+) ", LINEITEM)))
    for name, extra in [("lineitem", {}), ("lineitem_split", {"split": {"column": "l_orderkey", "parts": 4}})]:
        d = mesh / "pg" / name
        d.mkdir(parents=True)
        (d / "product.odps.yaml").write_text(
            f"apiVersion: v1.0.0\nkind: DataProduct\nid: pg-{name}\nstatus: active\n"
            f"outputPorts:\n  - name: v1\n    version: 1.0.0\n    contractId: pg-{name}-v1\n")
        binding = json.dumps({"adapter": "postgres", "database": "bench", "table": "lineitem", **extra})
        props = "".join(f"      - name: {c}\n" for c in columns)
        (d / "v1.odcs.yaml").write_text(
            f"apiVersion: v3.1.0\nkind: DataContract\nid: pg-{name}-v1\nversion: 1.0.0\nstatus: active\n"
            f"schema:\n  - name: lineitem\n    properties:\n{props}"
            f"customProperties:\n  - property: meshgate.binding\n    value: {binding}\n")
    return mesh, stores


def flight_read(addr: str, product: str) -> tuple[int, int]:
    rows = nbytes = 0
    with flight.connect(f"grpc://{addr}") as c:
        info = c.get_flight_info(flight.FlightDescriptor.for_path(*product.split("/")))
        for e in info.endpoints:
            for chunk in c.do_get(e.ticket):
                rows += chunk.data.num_rows
                nbytes += chunk.data.nbytes
    return rows, nbytes


def adbc_read(uri: str) -> tuple[int, int]:
    with pg_dbapi.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM lineitem")
        t = cur.fetch_arrow_table()
        return t.num_rows, t.nbytes


def timed(fn, rounds: int) -> tuple[float, int, int]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        rows, nbytes = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), rows, nbytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meshgate", required=True)
    ap.add_argument("--scale", default="1")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data = csv_file(args.scale)
    pg = Postgres()
    server = None
    try:
        pg.start()
        pg.sql("CREATE DATABASE tpch;")
        pg.sql(LINEITEM, db="tpch")
        pg.sql(f"\\copy lineitem FROM '{data}' WITH (FORMAT csv, HEADER true)\nANALYZE lineitem;", db="tpch")
        mesh, stores = write_mesh(Path(tempfile.mkdtemp()), pg.port)
        server, addr = start(
            [args.meshgate, "--log-format", "json", "serve", "--http-listen", "off", "--listen", "127.0.0.1:0", "--mesh", str(mesh),
             "--insecure-no-auth", "--no-watch", "--stores", str(stores)])
        uri = f"postgresql://postgres:{ADMIN_PASSWORD}@127.0.0.1:{pg.port}/tpch"
        results = [
            ("adbc_driver_postgresql (peer)", *timed(lambda: adbc_read(uri), args.rounds)),
            ("meshgate, one stream", *timed(lambda: flight_read(addr, "pg/lineitem"), args.rounds)),
            ("meshgate, split in 4 ranges", *timed(lambda: flight_read(addr, "pg/lineitem_split"), args.rounds)),
        ]
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) / 1024
        peer = results[0][1]
        print(f"\nTPC-H lineitem SF{args.scale} in PostgreSQL, median of {args.rounds} rounds\n")
        print(f"| reader | rows | seconds | Mrows/s | MiB | time vs peer |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, secs, rows, nbytes in results:
            print(f"| {name} | {rows:,} | {secs:.2f} | {rows / secs / 1e6:.2f} | {nbytes / 2**20:,.0f} | {secs / peer:.2f}× |")
        print(f"\nmeshgate peak resident memory over the run: {peak:,.0f} MiB")
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        pg.stop("fast")
        pg.remove()


if __name__ == "__main__":
    main()
