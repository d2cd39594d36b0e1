"""The rest of the wire-speed benchmark, in one run (`bash bench/run.sh wire [SCALE]`).

Same data as `flight_bench.py`: `tpchgen-cli`'s lineitem Parquet file as it comes, and the Arrow
IPC file written from it. Printed, each as a table:

1. The loopback TCP limit (iperf3, one and four streams), next to four concurrent DoGet streams of
   the C++ peer (the IPC file memory-mapped) and of meshgate, in MB/s of Arrow data received.
2. Four shard endpoints (`"shards": 4`) read in parallel, next to one stream and four whole-product
   streams, for both meshgate products.
3. Authentication + policy + audit on and off: the same reads through two gateways over the same
   mesh, one with `--auth` and `--audit-log` (an analyst's token; the sample's global policies),
   one with `--insecure-no-auth`; one-stream throughput and `GetFlightInfo` p50/p99. The rounds
   alternate between the two so drift of the machine hits both alike.
4. Body compression (none, LZ4 frame, ZSTD): one stream, with the bytes the server wrote to the
   socket (`wchar` in `/proc/<pid>/io`) and its CPU-seconds.
5. Memory: the server's resident memory before a read and at its peak (`VmHWM` after resetting it
   through `/proc/<pid>/clear_refs`) while a deliberately slow client reads 5× the per-stream
   budget of the product, then while 64 clients read the whole product at once; the C++ peer the
   same way (its figure includes the pages of the file it maps).
"""

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.flight as flight
import pyarrow.parquet as pq

from flight_bench import cpu_seconds, prepare, start

HERE = Path(__file__).resolve().parent
LOGICAL = {"int": "integer", "decimal": "number", "double": "number", "string": "string", "date32": "date"}
BUDGET = 64 << 20  # the gateway's default per-stream budget (`--stream-budget`)


def write_mesh(root: Path, meshgate: str, parquet: Path, ipc: Path) -> Path:
    """The two lineitem products, governed by the sample mesh's global policies."""
    sample = root / "sample"
    subprocess.run([meshgate, "sample", "write", str(sample)], check=True, capture_output=True)
    mesh = root / "mesh"
    shutil.copytree(sample / "_governance", mesh / "_governance")
    props = "".join(
        f"      - name: {f.name}\n        logicalType: {next(v for k, v in LOGICAL.items() if str(f.type).startswith(k))}\n"
        "        classification: internal\n"
        for f in pq.read_schema(parquet))
    for name, location, fmt in (("lineitem", parquet, "parquet"), ("lineitem_ipc", ipc, "arrow")):
        d = mesh / "tpch" / name
        d.mkdir(parents=True)
        (d / "product.odps.yaml").write_text(
            f"apiVersion: v1.0.0\nkind: DataProduct\nid: tpch-{name}\nstatus: active\n"
            f"outputPorts:\n  - name: v1\n    version: 1.0.0\n    contractId: tpch-{name}-v1\n")
        (d / "v1.odcs.yaml").write_text(
            f"apiVersion: v3.1.0\nkind: DataContract\nid: tpch-{name}-v1\nversion: 1.0.0\nstatus: active\n"
            "schema:\n  - name: lineitem\n    properties:\n" + props
            + f"customProperties:\n  - property: meshgate.binding\n    value: {{adapter: files, location: '{location}', "
            f"format: {fmt}}}\n")
    return mesh


class Target:
    """A running server and how to ask it for a product."""

    def __init__(self, name, cmd, token=None):
        self.name = name
        self.proc, self.addr = start(cmd)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self.options = flight.FlightCallOptions(headers=headers)
        self.peer = "peer_server.py" in " ".join(cmd)

    def descriptor(self, product: str, **query):
        if self.peer:
            return flight.FlightDescriptor.for_path("lineitem")
        return flight.FlightDescriptor.for_command(json.dumps({"product": f"tpch/{product}", **query}))

    def connect(self):
        return flight.connect(f"grpc://{self.addr}")

    def read(self, descriptor, client=None, parallel=False):
        """(seconds, rows, bytes) of reading every endpoint of `descriptor`, in parallel or in turn."""
        own = client is None
        client = client or self.connect()
        t0 = time.perf_counter()
        info = client.get_flight_info(descriptor, options=self.options)

        def endpoint(e, c):
            rows = nbytes = 0
            for chunk in c.do_get(e.ticket, options=self.options):
                rows += chunk.data.num_rows
                nbytes += chunk.data.nbytes
            return rows, nbytes

        if parallel:
            def fresh(e):
                with self.connect() as c:
                    return endpoint(e, c)
            with ThreadPoolExecutor(len(info.endpoints)) as pool:
                parts = list(pool.map(fresh, info.endpoints))
        else:
            parts = [endpoint(e, client) for e in info.endpoints]
        secs = time.perf_counter() - t0
        if own:
            client.close()
        return secs, sum(p[0] for p in parts), sum(p[1] for p in parts)

    def concurrent(self, descriptor, n: int):
        """n clients reading the whole product at once: (seconds, rows, bytes)."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            parts = list(pool.map(lambda _: self.read(descriptor), range(n)))
        return time.perf_counter() - t0, sum(p[1] for p in parts), sum(p[2] for p in parts)

    def info_latency(self, descriptor, calls=1000):
        with self.connect() as c:
            c.get_flight_info(descriptor, options=self.options)
            out = []
            for _ in range(calls):
                t = time.perf_counter()
                c.get_flight_info(descriptor, options=self.options)
                out.append(time.perf_counter() - t)
        out.sort()
        return out[len(out) // 2] * 1000, out[len(out) * 99 // 100] * 1000

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def proc_status(pid: int, key: str) -> int:
    """A `/proc/<pid>/status` figure in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def written(pid: int) -> int:
    """Bytes the process has passed to write/send (sockets included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise KeyError("wchar")


def peak_rss(pid: int, work) -> tuple[int, int, object]:
    """(resident bytes before `work`, peak resident bytes while it ran, its result)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = proc_status(pid, "VmRSS")
    result = work()
    return before, proc_status(pid, "VmHWM"), result


def slow_reader(target: Target, descriptor, budget_bytes: int, mb_per_s: float):
    """Reads `5 × budget_bytes` of the product at `mb_per_s`, then stops."""
    want = 5 * budget_bytes
    with target.connect() as c:
        info = c.get_flight_info(descriptor, options=target.options)
        reader = c.do_get(info.endpoints[0].ticket, options=target.options)
        got, t0 = 0, time.perf_counter()
        for chunk in reader:
            got += chunk.data.nbytes
            ahead = got / (mb_per_s * 1e6) - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
            if got >= want:
                break
        reader.cancel()
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback(streams: int, seconds: int = 5) -> float:
    """iperf3's loopback TCP throughput in MB/s with `streams` parallel streams."""
    iperf = shutil.which("iperf3")
    if iperf is None:
        raise SystemExit("iperf3 is not installed (bench/run.sh installs it)")
    port = free_port()
    server = subprocess.Popen([iperf, "-s", "-B", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until the server listens: the client fails fast before that
            run = subprocess.run([iperf, "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-P", str(streams),
                                  "-J"], capture_output=True, text=True)
            # A client that reached the server before it was ready may exit 0 with an error.
            result = json.loads(run.stdout) if run.stdout.strip().startswith("{") else {}
            if run.returncode == 0 and "sum_received" in result.get("end", {}):
                out = result
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"iperf3 did not run: {run.stdout[-500:]}")
    finally:
        server.kill()
        server.wait()
    return out["end"]["sum_received"]["bits_per_second"] / 8 / 1e6


def table(title: str, header: list[str], rows: list[list]):
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def loopback_table(peer, off, rounds):
    limit1, limit4 = loopback(1), loopback(4)
    rows = [["iperf3, 1 TCP stream", "", f"{limit1:,.0f}", "1.00"],
            ["iperf3, 4 TCP streams", "", f"{limit4:,.0f}", f"{limit4 / limit1:.2f}"]]
    for t, product in ((peer, "lineitem_ipc"), (off, "lineitem_ipc"), (off, "lineitem")):
        t.read(t.descriptor(product))  # warm
        secs, n, nbytes = statistics.median_low([t.concurrent(t.descriptor(product), 4) for _ in range(rounds)])
        label = t.name if t.peer else f"meshgate, {'IPC' if product.endswith('ipc') else 'Parquet'} product"
        rows.append([f"{label}: 4 DoGet streams", f"{n / secs / 1e6:.2f}", f"{nbytes / secs / 1e6:,.0f}",
                     f"{nbytes / secs / 1e6 / limit1:.2f}"])
    table(f"Loopback limit and four concurrent streams (median of {rounds}; MB/s of Arrow data received)",
          ["read", "Mrows/s", "MB/s", "vs iperf3 1 stream"], rows)


def shards_table(peer, off, rounds):
    rows = []
    peer_one = statistics.median_low([peer.read(peer.descriptor(""))[0] for _ in range(rounds)])
    total = peer.read(peer.descriptor(""))[1]
    rows.append([f"{peer.name}: 1 stream", f"{total / peer_one / 1e6:.2f}", "1.00"])
    for product, label in (("lineitem_ipc", "IPC"), ("lineitem", "Parquet")):
        for how, query, parallel in (("1 stream", {}, False), ("4 shard endpoints in parallel", {"shards": 4}, True)):
            runs = [off.read(off.descriptor(product, **query), parallel=parallel) for _ in range(rounds)]
            secs, n, _ = statistics.median_low(runs)
            assert n == total, f"{label} {how}: {n} rows, expected {total}"
            rows.append([f"meshgate, {label} product: {how}", f"{n / secs / 1e6:.2f}", f"{peer_one / secs:.2f}"])
    table(f"Shard endpoints (median of {rounds})", ["read", "Mrows/s", "vs C++ 1 stream"], rows)


def auth_table(off, on, rounds):
    rows = []
    for product, label in (("lineitem_ipc", "IPC"), ("lineitem", "Parquet")):
        samples = {"off": [], "on": []}
        cpu = {"off": 0.0, "on": 0.0}
        for t in (off, on):
            t.read(t.descriptor(product))
        for _ in range(rounds):
            for key, t in (("off", off), ("on", on)):
                c0 = cpu_seconds(t.proc.pid)
                secs, n, nbytes = t.read(t.descriptor(product))
                cpu[key] += cpu_seconds(t.proc.pid) - c0
                samples[key].append(secs)
        p = {key: t.info_latency(t.descriptor(product)) for key, t in (("off", off), ("on", on))}
        for key in ("off", "on"):
            secs = statistics.median(samples[key])
            rows.append([f"{label} product, auth {'+ policy + audit on' if key == 'on' else 'off'}",
                         f"{n / secs / 1e6:.2f}", f"{statistics.median(samples['off']) / secs:.3f}",
                         f"{cpu[key] / (rounds * nbytes / 1e9):.2f}", f"{p[key][0]:.3f}", f"{p[key][1]:.3f}",
                         f"{(p[key][0] - p['off'][0]) * 1000:+.0f}"])
    table(f"Authentication + policy + audit (one stream, median of {rounds}, alternating; GetFlightInfo over 1,000 calls)",
          ["read", "Mrows/s", "throughput vs off", "server CPU s/GB", "GetFlightInfo p50 ms", "p99 ms", "p50 cost µs"],
          rows)


def compression_table(off, rounds):
    rows = []
    for product, label in (("lineitem_ipc", "IPC"), ("lineitem", "Parquet")):
        for codec in ("none", "lz4", "zstd"):
            d = off.descriptor(product, compression=codec)
            off.read(d)
            w0, c0 = written(off.proc.pid), cpu_seconds(off.proc.pid)
            runs = [off.read(d) for _ in range(rounds)]
            wire, cpu = (written(off.proc.pid) - w0) / rounds, (cpu_seconds(off.proc.pid) - c0) / rounds
            secs, n, nbytes = statistics.median_low(runs)
            rows.append([f"{label} product, {codec}", f"{n / secs / 1e6:.2f}", f"{wire / 1e6:,.0f}",
                         f"{nbytes / wire:.2f}", f"{cpu / (nbytes / 1e9):.2f}"])
    table(f"Body compression, one stream (median of {rounds}; bytes written to the socket per read)",
          ["read", "Mrows/s", "wire MB", "Arrow bytes / wire bytes", "server CPU s/GB"], rows)


def memory_table(peer, fresh, readers):
    """`fresh()` starts a gateway: each of its rows gets its own, since an allocator keeps (and
    reuses) what earlier reads freed, which would hide what the next read takes."""
    rows = []
    for t, product, what in ((peer, "lineitem_ipc", "slow"), (peer, "lineitem_ipc", "many"),
                             (None, "lineitem_ipc", "slow"), (None, "lineitem_ipc", "many"),
                             (None, "lineitem", "slow"), (None, "lineitem", "many")):
        t = t or fresh()
        label = t.name if t.peer else f"meshgate, {'IPC' if product.endswith('ipc') else 'Parquet'} product"
        d = t.descriptor(product)
        with t.connect() as c:
            c.get_flight_info(d, options=t.options)
        if what == "slow":
            before, peak, got = peak_rss(t.proc.pid, lambda: slow_reader(t, d, BUDGET, 50))
            rows.append([f"{label}: slow client (50 MB/s, {got / 1e6:,.0f} MB read)", f"{before / 2**20:,.0f}",
                         f"{peak / 2**20:,.0f}", f"{(peak - before) / 2**20:,.0f}", ""])
        else:
            before, peak, (secs, n, nbytes) = peak_rss(t.proc.pid, lambda: t.concurrent(d, readers))
            rows.append([f"{label}: {readers} clients at once", f"{before / 2**20:,.0f}", f"{peak / 2**20:,.0f}",
                         f"{(peak - before) / 2**20:,.0f}", f"{n / secs / 1e6:.2f}"])
        if not t.peer:
            t.stop()
    table(f"Server memory (MiB resident; per-stream budget {BUDGET >> 20} MiB)",
          ["read", "before", "peak", "peak − before", "aggregate Mrows/s"], rows)


SECTIONS = ["loopback", "shards", "auth", "compression", "memory"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--readers", type=int, default=64, help="clients reading at once in the memory table")
    ap.add_argument("--meshgate", required=True)
    ap.add_argument("--meshgate-arg", action="append", default=[], help="extra `meshgate serve` flag (repeatable)")
    ap.add_argument("--only", action="append", choices=SECTIONS, help="only these tables (repeatable; default: all)")
    args = ap.parse_args()
    run = args.only or SECTIONS
    parquet, ipc = prepare(args.scale, HERE / "data")
    root = Path(tempfile.mkdtemp())
    targets = []
    try:
        mesh = write_mesh(root, args.meshgate, parquet, ipc)
        (root / "gateway.secret").write_text("b" * 48)
        (root / "auth.yaml").write_text("gateway: {secret_file: gateway.secret}\n")
        token = subprocess.run(
            [args.meshgate, "token", "issue", "--auth", str(root / "auth.yaml"), "--sub", "alice", "--roles", "analyst"],
            check=True, capture_output=True, text=True).stdout.strip()
        base = [args.meshgate, "--log-format", "json", "serve", "--http-listen", "off", "--listen", "127.0.0.1:0",
                "--mesh", str(mesh), "--no-watch", "--storage-root", str(HERE / "data"), *args.meshgate_arg]
        peer = Target("pyarrow C++ Flight, IPC file memory-mapped",
                      [sys.executable, str(HERE / "peer_server.py"), str(ipc), "mmap"])
        targets.append(peer)
        if set(run) - {"memory"}:
            off = Target("meshgate, auth off", [*base, "--insecure-no-auth"])
            targets.append(off)
            on = Target("meshgate, auth + policy + audit",
                        [*base, "--auth", str(root / "auth.yaml"), "--audit-log", str(root / "audit")], token)
            targets.append(on)
            if "loopback" in run:
                loopback_table(peer, off, args.rounds)
            if "shards" in run:
                shards_table(peer, off, args.rounds)
            if "auth" in run:
                auth_table(off, on, args.rounds)
            if "compression" in run:
                compression_table(off, args.rounds)
            for t in (off, on):
                t.stop()
                targets.remove(t)
        if "memory" in run:
            def fresh():
                t = Target("meshgate", [*base, "--insecure-no-auth"])
                targets.append(t)
                return t

            memory_table(peer, fresh, args.readers)
    finally:
        for t in targets:
            t.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
