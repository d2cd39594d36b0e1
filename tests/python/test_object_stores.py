"""Products in an S3-compatible bucket: a local S3 server (moto) on 127.0.0.1 that checks
credentials, buckets configured in a stores file with credentials by reference, Parquet (hive
partitioned) and CSV products, cached listings, a missing bucket, refused credentials and a
domain reading a bucket not open to it."""

import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from conftest import Server, product, read

MOTO = Path(sys.executable).parent / "moto_server"


class MotoServer:
    """A moto S3 server on a free port of 127.0.0.1 whose requests are kept (one log line each)."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines = []
        for line in self.proc.stdout:
            m = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.endpoint = m.group(1)
                break
        else:
            raise RuntimeError("moto_server exited before listening")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def listings(self, bucket: str) -> int:
        """How many object listings of `bucket` the server answered so far."""
        return sum(1 for l in list(self.lines) if f"GET /{bucket}?list-type=2" in l or f"GET /{bucket}/?list-type=2" in l)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Switch:
    """A TCP proxy to `target` on a free port of 127.0.0.1 that can be made to hang: while hung,
    it accepts connections and bytes and answers nothing."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.hung = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        upstream = socket.create_connection(("127.0.0.1", self.target))

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    if self.hung.is_set():
                        continue  # swallow: the store has stopped answering
                    dst.sendall(data)
            except OSError:
                pass

        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)


ORDERS = [("order_id", "integer"), ("amount", "integer"), ("region", "string")]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """A credential-checking S3 server holding bucket `lake`, and a gateway serving it."""
    import os

    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3", AWS_DEFAULT_REGION="us-east-1")
    moto = MotoServer(env)
    try:
        # Three unauthenticated calls make a user with a key; everything after is signed.
        iam = boto3.client("iam", endpoint_url=moto.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="meshgate")
        key = iam.create_access_key(UserName="meshgate")["AccessKey"]
        iam.put_user_policy(UserName="meshgate", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket="lake")
        s3.create_bucket(Bucket="locked")
        s3.create_bucket(Bucket="hangs")
        tmp = tmp_path_factory.mktemp("lake-files")
        for region, base in [("EMEA", 0), ("AMER", 1000)]:
            t = pa.table({"order_id": pa.array(range(base, base + 100), pa.int64()),
                          "amount": pa.array([i * 3 for i in range(100)], pa.int64())})
            f = tmp / f"{region}.parquet"
            pq.write_table(t, f)
            s3.upload_file(str(f), "lake", f"orders/region={region}/part-0.parquet")
        ships = pa.table({"shipment_id": [1, 2, 3], "city": ["Lyon", "Porto", "Oslo"]})
        pacsv.write_csv(ships, tmp / "s.csv")
        s3.upload_file(str(tmp / "s.csv"), "lake", "shipments/s.csv")
        s3.upload_file(str(tmp / "s.csv"), "locked", "shipments/s.csv")
        s3.upload_file(str(tmp / "s.csv"), "hangs", "shipments/s.csv")

        secret_file = tmp / "lake-secret"
        secret_file.write_text(key["SecretAccessKey"] + "\n")
        stores = tmp / "stores.yaml"
        common = {"aws_endpoint": moto.endpoint, "aws_region": "us-east-1",
                  "aws_allow_http": True, "aws_virtual_hosted_style_request": False}
        moto_port = int(moto.endpoint.rsplit(":", 1)[1])
        switch = Switch(moto_port)
        stores.write_text(json.dumps({"stores": [
            {"url": "s3://hangs", "timeout": "8s", "retries": 0,
             "options": dict(common, aws_endpoint=f"http://127.0.0.1:{switch.port}"),
             "secrets": {"aws_access_key_id": {"env": "LAKE_KEY_ID"},
                         "aws_secret_access_key": {"file": str(secret_file)}}},
            {"url": "s3://lake", "domains": ["lake"], "options": common,
             "secrets": {"aws_access_key_id": {"env": "LAKE_KEY_ID"},
                         "aws_secret_access_key": {"file": str(secret_file)}}},
            {"url": "s3://locked", "options": common,
             "secrets": {"aws_access_key_id": {"env": "LAKE_WRONG_KEY_ID"},
                         "aws_secret_access_key": {"env": "LAKE_WRONG_KEY_ID"}}},
            {"url": "s3://no-such-bucket", "options": common,
             "secrets": {"aws_access_key_id": {"env": "LAKE_KEY_ID"},
                         "aws_secret_access_key": {"file": str(secret_file)}}},
        ]}))
        mesh = tmp_path_factory.mktemp("lake-mesh")
        product(mesh, "lake", "orders", ORDERS,
                {"adapter": "files", "location": "s3://lake/orders/", "format": "parquet"})
        product(mesh, "lake", "shipments", [("shipment_id", "integer"), ("city", "string")],
                {"adapter": "files", "location": "s3://lake/shipments/", "format": "csv"})
        product(mesh, "lake", "gone", ORDERS,
                {"adapter": "files", "location": "s3://no-such-bucket/orders/", "format": "parquet"})
        product(mesh, "lake", "locked", [("shipment_id", "integer"), ("city", "string")],
                {"adapter": "files", "location": "s3://locked/shipments/", "format": "csv"})
        product(mesh, "lake", "slow", [("shipment_id", "integer"), ("city", "string")],
                {"adapter": "files", "location": "s3://hangs/shipments/", "format": "csv"})
        product(mesh, "lake", "targets", ORDERS, {"adapter": "delta", "location": "s3://lake/targets/"})
        product(mesh, "other", "peek", ORDERS,
                {"adapter": "files", "location": "s3://lake/orders/", "format": "parquet"})
        os.environ["LAKE_KEY_ID"] = key["AccessKeyId"]
        os.environ["LAKE_WRONG_KEY_ID"] = "AKIAWRONGWRONGWRONG1"
        server = Server(mesh, "--stores", str(stores), "--no-watch")
        moto.switch = switch
        moto.s3 = s3
        yield moto, server
        server.stop()
    finally:
        moto.stop()


def test_parquet_and_csv_products_in_a_bucket(lake):
    moto, server = lake
    with server.client() as c:
        orders = read(c, "lake", "orders")
        assert orders.num_rows == 200
        assert sorted(set(orders.column("region").to_pylist())) == ["AMER", "EMEA"]
        emea = read(c, "lake", "orders", filter="region = 'EMEA' AND amount >= 150")
        assert emea.num_rows == 50 and set(emea.column("region").to_pylist()) == {"EMEA"}
        ships = read(c, "lake", "shipments")
        assert sorted(ships.column("city").to_pylist()) == ["Lyon", "Oslo", "Porto"]


def test_listings_are_cached_not_repeated_per_read(lake):
    moto, server = lake
    with server.client() as c:
        read(c, "lake", "orders")
        before = moto.listings("lake")
        assert before >= 1, "the bucket was listed when the products were opened"
        for _ in range(5):
            assert read(c, "lake", "orders").num_rows == 200
        assert moto.listings("lake") == before, "reads reuse the cached listing"


def test_missing_bucket_and_refused_credentials_are_clear_and_isolated(lake):
    _, server = lake
    with server.client() as c:
        with pytest.raises(flight.FlightUnavailableError) as e:
            read(c, "lake", "gone")
        assert "the bucket or path does not exist" in str(e.value)
        with pytest.raises(flight.FlightUnavailableError) as e:
            read(c, "lake", "locked")
        assert "refused the gateway's credentials" in str(e.value)
        # The others keep serving.
        assert read(c, "lake", "shipments").num_rows == 3
        health = json.loads(b"".join(r.body.to_pybytes() for r in c.do_action(flight.Action("health", b""))))
        products = {p["product"]: p for p in health["products"]}
        assert products["lake/orders"]["status"] == "available"
        problems = json.dumps(products["lake/gone"]) + json.dumps(products["lake/locked"])
        assert "does not exist" in problems and "credentials" in problems, problems
        assert "AKIA" not in problems and "http://127.0.0.1" not in json.dumps(health)


def test_a_bucket_is_read_only_by_the_domains_it_is_open_to(lake):
    _, server = lake
    with server.client() as c:
        with pytest.raises(flight.FlightUnavailableError):
            read(c, "other", "peek")
        health = json.loads(b"".join(r.body.to_pybytes() for r in c.do_action(flight.Action("health", b""))))
        peek = next(p for p in health["products"] if p["product"] == "other/peek")
        assert "not open to domain `other`" in json.dumps(peek), peek


def test_a_hung_store_leaves_every_other_product_serving(lake):
    moto, server = lake
    with server.client() as c:
        assert read(c, "lake", "slow").num_rows == 3
    moto.switch.hung.set()
    try:
        outcome = {}

        def read_hung():
            with server.client() as c:
                try:
                    read(c, "lake", "slow")
                    outcome["read"] = "served"
                except flight.FlightError as e:
                    outcome["read"] = e

        stuck = threading.Thread(target=read_hung)
        stuck.start()
        # While that read waits on the hung store, everything else is served, health included.
        with server.client() as c:
            for _ in range(5):
                assert read(c, "lake", "orders").num_rows == 200
                assert read(c, "lake", "shipments").num_rows == 3
            health = json.loads(b"".join(r.body.to_pybytes() for r in c.do_action(flight.Action("health", b""))))
            assert {p["product"]: p["status"] for p in health["products"]}["lake/orders"] == "available"
        assert stuck.is_alive(), "the hung read was still waiting while the others were served"
        stuck.join(timeout=60)
        assert isinstance(outcome["read"], flight.FlightUnavailableError), outcome
        assert "127.0.0.1" not in str(outcome["read"])
    finally:
        moto.switch.hung.clear()


def test_a_delta_product_in_a_bucket_is_published_and_read_by_version(lake):
    moto, server = lake
    with server.client() as c:
        for amounts in ([1, 2, 3], [4]):
            t = pa.table({"order_id": pa.array(range(len(amounts)), pa.int64()),
                          "amount": pa.array(amounts, pa.int64()),
                          "region": pa.array(["EMEA"] * len(amounts))})
            writer, reader = c.do_put(flight.FlightDescriptor.for_path("lake", "targets"), t.schema)
            writer.write_table(t)
            writer.done_writing()
            reader.read()
            writer.close()
        assert sorted(read(c, "lake", "targets").column("amount").to_pylist()) == [1, 2, 3, 4]
        assert sorted(read(c, "lake", "targets", "@0").column("amount").to_pylist()) == [1, 2, 3]
    # The table is in the bucket: Parquet files and a transaction log with one entry per version.
    keys = [o["Key"] for o in moto.s3.list_objects_v2(Bucket="lake", Prefix="targets/")["Contents"]]
    assert sum(k.startswith("targets/_delta_log/") and k.endswith(".json") for k in keys) == 2, keys
    assert any(k.endswith(".parquet") for k in keys), keys
