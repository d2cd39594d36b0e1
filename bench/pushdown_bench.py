"""A governed read of a partitioned product with and without storage pushdown, in one run
(`bash bench/run.sh pushdown [SCALE]`).

The data is `tpchgen-cli`'s lineitem Parquet file as it comes, written by pyarrow's dataset
writer as a hive-partitioned folder by `l_shipmode` (seven partitions), the way partitioned
datasets are written by Arrow tools (view-typed string columns cast to `string`, which that
writer needs). Governance is the sample mesh's global policies plus a row
filter for analysts (`l_shipmode = 'AIR'`). Two gateways serve the same mesh with authentication
on, one with `--no-storage-pushdown`; an analyst's token reads through both:

- the whole product (the row filter decides which rows: one partition of seven);
- the product with a caller predicate (`l_quantity < 5`, statistics can prune row groups).

Printed: median seconds of the rounds on each gateway, the rows, and the ratio.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as flight
import pyarrow.parquet as pq

from flight_bench import start

HERE = Path(__file__).resolve().parent
LOGICAL = {"int": "integer", "decimal": "number", "double": "number", "string": "string", "date32": "date"}


def partitioned(scale: str) -> Path:
    out = HERE / "data" / f"sf{scale}"
    parquet, folder = out / "lineitem.parquet", out / "lineitem_by_shipmode"
    if not parquet.exists():
        tpchgen = Path(sys.executable).with_name("tpchgen-cli")
        subprocess.run([str(tpchgen), "parquet", "-s", scale, "--tables=lineitem", f"--output-dir={out}"], check=True)
    if not folder.exists():
        tmp = folder.with_suffix(".tmp")
        # pyarrow's writer cannot partition on view-typed columns: the view columns are cast to
        # `string` (same values) before writing.
        table = pq.read_table(parquet)
        classic = pa.schema([f.with_type(pa.string()) if f.type == pa.string_view() else f for f in table.schema])
        ds.write_dataset(table.cast(classic), tmp, format="parquet", partitioning=["l_shipmode"],
                         partitioning_flavor="hive")
        tmp.rename(folder)
    return folder


def write_mesh(root: Path, meshgate: str, data: Path) -> Path:
    sample = root / "sample"
    subprocess.run([meshgate, "sample", "write", str(sample)], check=True, capture_output=True)
    mesh = root / "mesh"
    shutil.copytree(sample / "_governance", mesh / "_governance")
    d = mesh / "tpch" / "lineitem"
    d.mkdir(parents=True)
    (mesh / "tpch" / "_governance.yaml").write_text(
        "row_filters:\n  - product: lineitem\n    roles: [analyst]\n    filter: \"l_shipmode = 'AIR'\"\n")
    (d / "product.odps.yaml").write_text(
        "apiVersion: v1.0.0\nkind: DataProduct\nid: tpch-lineitem\nstatus: active\n"
        "outputPorts:\n  - name: v1\n    version: 1.0.0\n    contractId: tpch-lineitem-v1\n")
    props = []
    for f in pq.read_schema(next(data.rglob("*.parquet"))):
        kind = next(v for k, v in LOGICAL.items() if str(f.type).startswith(k))
        props.append(f"      - name: {f.name}\n        logicalType: {kind}\n        classification: internal\n")
    props.append("      - name: l_shipmode\n        logicalType: string\n        classification: internal\n")
    (d / "v1.odcs.yaml").write_text(
        "apiVersion: v3.1.0\nkind: DataContract\nid: tpch-lineitem-v1\nversion: 1.0.0\nstatus: active\n"
        "schema:\n  - name: lineitem\n    properties:\n" + "".join(props)
        + f"customProperties:\n  - property: meshgate.binding\n    value: {{adapter: files, location: '{data}', "
        "format: parquet}\n")
    return mesh


def serve(meshgate: str, root: Path, mesh: Path, name: str, *extra: str) -> tuple[subprocess.Popen, str]:
    return start(
        [meshgate, "--log-format", "json", "serve", "--http-listen", "off", "--listen", "127.0.0.1:0", "--mesh", str(mesh), "--no-watch",
         "--auth", str(root / "auth.yaml"), "--audit-log", str(root / f"audit-{name}"),
         "--storage-root", str(HERE / "data"), *extra])


def read(addr: str, token: str, **query) -> int:
    opts = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
    with flight.connect(f"grpc://{addr}") as c:
        d = flight.FlightDescriptor.for_command(json.dumps({"product": "tpch/lineitem", **query}))
        info = c.get_flight_info(d, options=opts)
        return sum(chunk.data.num_rows for e in info.endpoints for chunk in c.do_get(e.ticket, options=opts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meshgate", required=True)
    ap.add_argument("--scale", default="1")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    data = partitioned(args.scale)
    root = Path(tempfile.mkdtemp())
    servers = []
    try:
        (root / "gateway.secret").write_text("b" * 48)
        (root / "auth.yaml").write_text("gateway: {secret_file: gateway.secret}\n")
        mesh = write_mesh(root, args.meshgate, data)
        token = subprocess.run(
            [args.meshgate, "token", "issue", "--auth", str(root / "auth.yaml"), "--sub", "alice", "--roles", "analyst"],
            check=True, capture_output=True, text=True).stdout.strip()
        on = serve(args.meshgate, root, mesh, "on")
        servers.append(on[0])
        off = serve(args.meshgate, root, mesh, "off", "--no-storage-pushdown")
        servers.append(off[0])
        cases = [("row filter only (1 of 7 partitions)", {}),
                 ("row filter and `l_quantity < 5`", {"filter": "l_quantity < 5"})]
        print(f"\nGoverned read of TPC-H lineitem SF{args.scale} partitioned by l_shipmode, analyst token, "
              f"median of {args.rounds} rounds\n")
        print("| read | rows | pushdown on (s) | pushdown off (s) | off / on |")
        print("|---|---:|---:|---:|---:|")
        for name, query in cases:
            times = {}
            for label, (_, addr) in (("on", on), ("off", off)):
                samples = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    rows = read(addr, token, **query)
                    samples.append(time.perf_counter() - t)
                times[label] = (statistics.median(samples), rows)
            assert times["on"][1] == times["off"][1], "the same rows either way"
            print(f"| {name} | {times['on'][1]:,} | {times['on'][0]:.3f} | {times['off'][0]:.3f} | "
                  f"{times['off'][0] / times['on'][0]:.1f}× |")
    finally:
        for p in servers:
            p.terminate()
            p.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
