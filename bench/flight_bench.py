"""Reads TPC-H lineitem over Flight from meshgate and from pyarrow's C++ Flight server.

Every server runs as its own process on 127.0.0.1 and is read by the same client code in this
process, one stream at a time, several rounds; the table reports the median round. meshgate runs
without authentication here: it costs one token check per call, not per batch.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as flight
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
LOGICAL = {"int": "integer", "decimal": "number", "double": "number", "string": "string", "date32": "date"}


def prepare(scale: str, data: Path) -> Path:
    """Generates lineitem and rewrites it with plain string columns (what meshgate serves)."""
    out = data / f"sf{scale}" / "lineitem.parquet"
    if out.exists():
        return out
    raw = data / f"sf{scale}-raw"
    if not (raw / "lineitem.parquet").exists():
        tpchgen = Path(sys.executable).with_name("tpchgen-cli")
        subprocess.run([str(tpchgen), "parquet", "-s", scale, "--tables=lineitem", f"--output-dir={raw}"], check=True)
    table = pq.read_table(raw / "lineitem.parquet")
    schema = pa.schema([pa.field(f.name, pa.string() if f.type == pa.string_view() else f.type, f.nullable) for f in table.schema])
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.cast(schema), out, row_group_size=122_880, compression="snappy")
    return out


def write_mesh(parquet: Path, mesh: Path):
    d = mesh / "tpch" / "lineitem"
    d.mkdir(parents=True)
    (d / "product.odps.yaml").write_text(
        "apiVersion: v1.0.0\nkind: DataProduct\nid: tpch-lineitem\nstatus: active\n"
        "outputPorts:\n  - name: v1\n    contractId: tpch-lineitem-v1\n"
    )
    props = []
    for f in pq.read_schema(parquet):
        kind = next(v for k, v in LOGICAL.items() if str(f.type).startswith(k))
        props.append(f"      - name: {f.name}\n        logicalType: {kind}\n")
    (d / "v1.odcs.yaml").write_text(
        "apiVersion: v3.1.0\nkind: DataContract\nid: tpch-lineitem-v1\nversion: 1.0.0\nstatus: active\n"
        "schema:\n  - name: lineitem\n    properties:\n" + "".join(props)
        + f"customProperties:\n  - property: meshgate.binding\n    value: {{adapter: files, location: '{parquet}', format: parquet}}\n"
    )


def start(cmd) -> tuple[subprocess.Popen, str]:
    """Starts a server that prints its address as the first line of stdout (peer) or logs it."""
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


def measure(addr: str, descriptor, rounds: int):
    client = flight.connect(f"grpc://{addr}")
    times, rows, nbytes = [], 0, 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        info = client.get_flight_info(descriptor)
        for e in info.endpoints:
            reader = client.do_get(e.ticket)
            rows, nbytes = 0, 0
            for chunk in reader:
                rows += chunk.data.num_rows
                nbytes += chunk.data.nbytes
        times.append(time.perf_counter() - t0)
    client.close()
    return statistics.median(times), rows, nbytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--meshgate", required=True)
    args = ap.parse_args()
    parquet = prepare(args.scale, HERE / "data")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Path(tmp) / "mesh"
        write_mesh(parquet, mesh)
        servers = [
            ("meshgate (Parquet per request)", [args.meshgate, "--log-format", "json", "serve", "--insecure-no-auth", "--no-watch", "--mesh", str(mesh), "--listen", "127.0.0.1:0"],
             flight.FlightDescriptor.for_path("tpch", "lineitem")),
            ("pyarrow C++ Flight (Parquet per request)", [sys.executable, str(HERE / "peer_server.py"), str(parquet), "scan"],
             flight.FlightDescriptor.for_path("lineitem")),
            ("pyarrow C++ Flight (table in memory)", [sys.executable, str(HERE / "peer_server.py"), str(parquet), "memory"],
             flight.FlightDescriptor.for_path("lineitem")),
        ]
        for name, cmd, descriptor in servers:
            proc, addr = start(cmd)
            try:
                measure(addr, descriptor, 1)  # warm the page cache and the server
                secs, rows, nbytes = measure(addr, descriptor, args.rounds)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            results.append((name, secs, rows, nbytes))
    base = results[0][1]
    # MB/s is the table's Arrow size (read once from the Parquet file) over the time, so the
    # column compares like with like; "received" is what the client's batches reference.
    logical = pq.read_table(parquet).nbytes
    print(f"\nTPC-H lineitem, scale {args.scale} ({logical / 1e6:.0f} MB in Arrow): median of {args.rounds} full reads, one stream, pyarrow.flight client\n")
    print("| server | rows | seconds | Mrows/s | MB/s | received MB | meshgate time / this |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, secs, rows, nbytes in results:
        print(f"| {name} | {rows:,} | {secs:.2f} | {rows / secs / 1e6:.2f} | {logical / secs / 1e6:.0f} | {nbytes / 1e6:.0f} | {base / secs:.2f} |")


if __name__ == "__main__":
    main()
