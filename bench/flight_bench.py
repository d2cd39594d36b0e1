"""Reads TPC-H lineitem over Flight from meshgate and from pyarrow's C++ Flight server, in one run.

The data is what the tools write: `tpchgen-cli`'s Parquet file as it comes (its embedded Arrow
schema has view types), and an Arrow IPC file of the same table in 65,536-row batches written by
pyarrow from it (types kept). Every server runs as its own process on 127.0.0.1 and is read by the
same pyarrow client code. meshgate runs without authentication here (`--insecure-no-auth`): what
authentication, policy and audit cost is measured by `wire_bench.py` (`bash bench/run.sh wire`).

Printed per server: one stream (median of the rounds) as Mrows/s, messages per stream, time to
first batch and bytes received; four concurrent streams; GetFlightInfo p50/p99 over 1,000 calls;
the server's CPU-seconds per GB served (from /proc, over the one-stream rounds).

A second table reads the same table through Flight SQL: `SELECT * FROM tpch.<table>` with the
ADBC Flight SQL driver (`fetch_arrow_table`, which prepares the statement as BI tools do), next to
the plain Flight read of the same product and the C++ peer; then TPC-H Q1 and Q6 through ADBC and
`ListFlights` p50/p99 over 1,000 calls, for meshgate.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
LOGICAL = {"int": "integer", "decimal": "number", "double": "number", "string": "string", "date32": "date"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def prepare(scale: str, data: Path) -> tuple[Path, Path]:
    """`tpchgen-cli`'s lineitem Parquet file, unmodified, and an Arrow IPC file of the same table."""
    out = data / f"sf{scale}"
    parquet, ipc = out / "lineitem.parquet", out / "lineitem.arrow"
    if not parquet.exists():
        tpchgen = Path(sys.executable).with_name("tpchgen-cli")
        subprocess.run([str(tpchgen), "parquet", "-s", scale, "--tables=lineitem", f"--output-dir={out}"], check=True)
    if not ipc.exists():
        pf = pq.ParquetFile(parquet)
        tmp = ipc.with_suffix(".tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, pf.schema_arrow) as writer:
            for batch in pf.iter_batches(batch_size=65_536):
                writer.write_batch(batch)
        tmp.rename(ipc)
    return parquet, ipc


def write_mesh(mesh: Path, name: str, location: Path, fmt: str):
    d = mesh / "tpch" / name
    d.mkdir(parents=True)
    (d / "product.odps.yaml").write_text(
        f"apiVersion: v1.0.0\nkind: DataProduct\nid: tpch-{name}\nstatus: active\n"
        f"outputPorts:\n  - name: v1\n    version: 1.0.0\n    contractId: tpch-{name}-v1\n"
    )
    props = []
    for f in pq.read_schema(location.with_suffix(".parquet")):
        kind = next(v for k, v in LOGICAL.items() if str(f.type).startswith(k))
        props.append(f"      - name: {f.name}\n        logicalType: {kind}\n")
    (d / "v1.odcs.yaml").write_text(
        f"apiVersion: v3.1.0\nkind: DataContract\nid: tpch-{name}-v1\nversion: 1.0.0\nstatus: active\n"
        "schema:\n  - name: lineitem\n    properties:\n" + "".join(props)
        + f"customProperties:\n  - property: meshgate.binding\n    value: {{adapter: files, location: '{location}', format: {fmt}}}\n"
    )


def start(cmd) -> tuple[subprocess.Popen, str]:
    """Starts a server that prints its address (peer: `ADDR`, meshgate: a `listening` log record)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stream = p.stderr if "--log-format" in cmd else p.stdout
    for line in stream:
        if line.startswith("{"):
            rec = json.loads(line)
            if rec["fields"].get("message") == "listening":
                addr = rec["fields"]["addr"]
                break
        elif line.startswith("ADDR "):
            addr = line.split()[1]
            break
    else:
        raise RuntimeError(f"{cmd[0]} did not start")
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()
    return p, addr


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def read_once(client, descriptor):
    """One full read: (seconds, rows, messages, seconds to first batch, bytes received)."""
    t0 = time.perf_counter()
    info = client.get_flight_info(descriptor)
    rows = messages = nbytes = 0
    first = None
    for e in info.endpoints:
        for chunk in client.do_get(e.ticket):
            if first is None:
                first = time.perf_counter() - t0
            rows += chunk.data.num_rows
            nbytes += chunk.data.nbytes
            messages += 1
    return time.perf_counter() - t0, rows, messages, first, nbytes


def measure(proc, addr: str, descriptor, rounds: int, table_bytes: int) -> dict:
    client = flight.connect(f"grpc://{addr}")
    read_once(client, descriptor)  # warm the page cache and the server
    cpu0 = cpu_seconds(proc.pid)
    runs = [read_once(client, descriptor) for _ in range(rounds)]
    cpu = cpu_seconds(proc.pid) - cpu0
    secs, rows, messages, first, nbytes = sorted(runs)[len(runs) // 2]

    def one_stream(_):
        with flight.connect(f"grpc://{addr}") as c:
            return read_once(c, descriptor)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        four = list(pool.map(one_stream, range(4)))
    four_secs = time.perf_counter() - t0

    latencies = []
    for _ in range(1000):
        t = time.perf_counter()
        client.get_flight_info(descriptor)
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    client.close()
    return {
        "rows": rows,
        "mrows": rows / secs / 1e6,
        "messages": messages,
        "first_ms": first * 1000,
        "received_mb": nbytes / 1e6,
        "four_mrows": sum(r[1] for r in four) / four_secs / 1e6,
        "four_first_ms": max(r[3] for r in four) * 1000,
        "p50_ms": latencies[500] * 1000,
        "p99_ms": latencies[990] * 1000,
        "cpu_per_gb": cpu / (rounds * table_bytes / 1e9),
    }


def measure_sql(addr: str, table: str, rounds: int) -> dict:
    """`SELECT * FROM tpch.<table>` through ADBC: median seconds of `rounds` full reads."""
    with flight_sql.connect(f"grpc://{addr}") as conn:
        def once():
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(f"SELECT * FROM tpch.{table}")
                rows = cur.fetch_arrow_table().num_rows
            return time.perf_counter() - t0, rows
        once()  # warm
        secs, rows = sorted(once() for _ in range(rounds))[rounds // 2]
    return {"rows": rows, "mrows": rows / secs / 1e6, "secs": secs}


# TPC-H Q1 and Q6 as the specification writes them (validation parameters), over `tpch.<table>`.
QUERIES = {
    "Q1": """SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty,
        sum(l_extendedprice) AS sum_base_price,
        sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
        sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
        avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price, avg(l_discount) AS avg_disc,
        count(*) AS count_order
        FROM tpch.{table}
        WHERE l_shipdate <= date '1998-12-01' - interval '90' day
        GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus""",
    "Q6": """SELECT sum(l_extendedprice * l_discount) AS revenue FROM tpch.{table}
        WHERE l_shipdate >= date '1994-01-01' AND l_shipdate < date '1995-01-01'
        AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24""",
}


def measure_queries(addr: str, table: str, rounds: int) -> dict:
    """Median seconds of each TPC-H query through ADBC, and ListFlights p50/p99 (ms)."""
    out = {}
    with flight_sql.connect(f"grpc://{addr}") as conn:
        for name, sql in QUERIES.items():
            def once():
                t0 = time.perf_counter()
                with conn.cursor() as cur:
                    cur.execute(sql.format(table=table))
                    cur.fetch_arrow_table()
                return time.perf_counter() - t0
            once()
            out[name] = sorted(once() for _ in range(rounds))[rounds // 2]
    client = flight.connect(f"grpc://{addr}")
    latencies = []
    for _ in range(1000):
        t = time.perf_counter()
        list(client.list_flights())
        latencies.append(time.perf_counter() - t)
    client.close()
    latencies.sort()
    out["list_p50_ms"], out["list_p99_ms"] = latencies[500] * 1000, latencies[990] * 1000
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--meshgate", action="append", required=True,
                    help="a meshgate binary, or LABEL=BINARY to compare builds in one run (repeatable)")
    ap.add_argument("--meshgate-arg", action="append", default=[], help="extra `meshgate serve` flag (repeatable)")
    args = ap.parse_args()
    parquet, ipc = prepare(args.scale, HERE / "data")
    table_bytes = pq.read_table(parquet).nbytes
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Path(tmp) / "mesh"
        write_mesh(mesh, "lineitem_ipc", ipc, "arrow")
        write_mesh(mesh, "lineitem", parquet, "parquet")
        builds = []
        for spec in args.meshgate:
            label, _, binary = spec.rpartition("=")
            name = f"meshgate ({label})" if label else "meshgate"
            builds.append((name, [binary, "--log-format", "json", "serve", "--http-listen", "off", "--insecure-no-auth",
                                  "--no-watch", "--mesh", str(mesh), "--listen", "127.0.0.1:0",
                                  "--storage-root", str(HERE / "data"), *args.meshgate_arg]))
        peer = [sys.executable, str(HERE / "peer_server.py")]
        ipc_path = flight.FlightDescriptor.for_path("tpch", "lineitem_ipc")
        parquet_path = flight.FlightDescriptor.for_path("tpch", "lineitem")
        servers = [
            ("pyarrow C++ Flight, IPC file memory-mapped", [*peer, str(ipc), "mmap"], flight.FlightDescriptor.for_path("lineitem")),
            *[(f"{name}, IPC product", cmd, ipc_path) for name, cmd in builds],
            ("pyarrow C++ Flight, Parquet per request", [*peer, str(parquet), "scan"], flight.FlightDescriptor.for_path("lineitem")),
            *[(f"{name}, Parquet product", cmd, parquet_path) for name, cmd in builds],
        ]
        sql, queries = [], []
        for name, cmd, descriptor in servers:
            proc, addr = start(cmd)
            try:
                results.append((name, measure(proc, addr, descriptor, args.rounds, table_bytes)))
                if name.startswith("meshgate"):
                    table = descriptor.path[-1].decode()
                    sql.append((f"{name}: Flight SQL (ADBC) SELECT *", measure_sql(addr, table, args.rounds)))
                    queries.append((name, measure_queries(addr, table, args.rounds)))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    peer_rows = results[0][1]["mrows"]
    print(f"\nTPC-H lineitem, scale {args.scale}: {results[0][1]['rows']:,} rows, {table_bytes / 1e6:.0f} MB as Arrow; "
          f"pyarrow.flight client; one stream = median of {args.rounds} reads\n")
    print("| server | 1 stream Mrows/s | vs C++ IPC | messages | first batch ms | received MB | 4 streams Mrows/s | 4 streams first batch ms | GetFlightInfo p50 ms | p99 ms | server CPU s/GB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results:
        print(f"| {name} | {r['mrows']:.2f} | {r['mrows'] / peer_rows:.2f} | {r['messages']:,} | {r['first_ms']:.0f} | "
              f"{r['received_mb']:.0f} | {r['four_mrows']:.2f} | {r['four_first_ms']:.0f} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['cpu_per_gb']:.2f} |")
    print(f"\nSELECT * through the ADBC Flight SQL driver next to the plain Flight reads above (median of {args.rounds})\n")
    print("| read | rows | seconds | Mrows/s | vs C++ IPC |")
    print("|---|---:|---:|---:|---:|")
    flights = [(name, {"rows": r["rows"], "mrows": r["mrows"], "secs": r["rows"] / r["mrows"] / 1e6}) for name, r in results]
    for name, r in [*flights, *sql]:
        print(f"| {name} | {r['rows']:,} | {r['secs']:.2f} | {r['mrows']:.2f} | {r['mrows'] / peer_rows:.2f} |")
    print(f"\nTPC-H queries through ADBC (median of {args.rounds}) and ListFlights over 1,000 calls\n")
    print("| server | Q1 s | Q6 s | ListFlights p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, r in queries:
        print(f"| {name} | {r['Q1']:.2f} | {r['Q6']:.2f} | {r['list_p50_ms']:.2f} | {r['list_p99_ms']:.2f} |")


if __name__ == "__main__":
    main()
