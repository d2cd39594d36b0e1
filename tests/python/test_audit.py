"""The audit log as an operator relies on it: every served read is on disk before the client sees
the end of its stream, a killed process loses nothing and restarts on its log, a graceful stop
records the reads it had to end, and `meshgate audit verify` checks the whole history."""

import json
import signal
import subprocess
from pathlib import Path

import pyarrow.flight as flight

from conftest import BIN, Server
from test_auth import login, read


def records(log_dir: Path):
    lines = []
    for segment in sorted(log_dir.glob("*.jsonl")):
        lines += segment.read_text().splitlines()
    return [json.loads(line) for line in lines]


def verify(log_dir: Path):
    out = subprocess.run([str(BIN), "audit", "verify", str(log_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_completed_reads_survive_kill_9(tmp_path):
    """Reads served, then SIGKILL without any flush: every completed read is in the log, with its
    start, and the gateway restarts on that log."""
    server = Server(None, cwd=tmp_path, secure=True)
    served = []
    try:
        alice, opts = login(server, "alice")
        for product in ["warehouses", "shipments", "warehouses"]:
            served.append(read(alice, flight.FlightDescriptor.for_path("logistics", product), opts).num_rows)
    finally:
        server.proc.kill()
        server.proc.wait(timeout=30)
    log_dir = tmp_path / ".meshgate" / "audit"
    found = records(log_dir)
    reads = [r for r in found if r["kind"] == "read" and r["rpc"] == "DoGet" and r["actor"]["sub"] == "alice"]
    assert [r["outcome"]["rows"] for r in reads] == served, found
    assert all(r["outcome"]["status"] == "OK" for r in reads)
    starts = {r["event_id"] for r in found if r["kind"] == "read_start"}
    assert {r["event_id"] for r in reads} <= starts, "each read's start was recorded before its data"
    assert f"{len(found)} records" in verify(log_dir)
    # The killed gateway's log is continued, not refused.
    again = Server(None, cwd=tmp_path, secure=True)
    try:
        alice, opts = login(again, "alice")
        read(alice, flight.FlightDescriptor.for_path("logistics", "warehouses"), opts)
    finally:
        again.stop()
    assert len(records(log_dir)) > len(found)
    verify(log_dir)


def test_a_stop_records_the_reads_it_ends(tmp_path):
    """A client that stops reading a large product keeps its stream open past the grace period;
    SIGTERM ends it, records the ended read, and then closes the log."""
    server = Server(None, "--shutdown-grace", "300ms", cwd=tmp_path, secure=True)
    try:
        # A small, fixed receive window: the client holds only what it reads.
        alice = flight.FlightClient(
            f"grpc://{server.addr}",
            generic_options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)],
        )
        opts = flight.FlightCallOptions(headers=[alice.authenticate_basic_token("alice", "alice-dev-password")])
        info = alice.get_flight_info(flight.FlightDescriptor.for_path("logistics", "shipments"), options=opts)
        reader = alice.do_get(info.endpoints[0].ticket, options=opts)
        reader.read_chunk()  # the stream is running; the client reads no further
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    log_dir = tmp_path / ".meshgate" / "audit"
    found = records(log_dir)
    reads = [r for r in found if r["kind"] == "read" and r["rpc"] == "DoGet"]
    assert len(reads) == 1, found
    assert reads[0]["outcome"]["status"] in ("Unavailable", "CANCELLED"), reads[0]
    verify(log_dir)
