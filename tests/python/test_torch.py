"""The PyTorch example (`examples/python/torch_dataset.py`) against the real gateway: DataLoader
workers and distributed ranks each read their endpoints, every row exactly once; a seed gives one
order; a broken stream continues where it stopped."""

import sys

import pyarrow as pa
import pyarrow.flight as flight
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO

sys.path.insert(0, str(REPO / "examples" / "python"))
from torch_dataset import MeshgateDataset  # noqa: E402

PRODUCT = "sales/orders"


def ids(batches) -> list[int]:
    return [i for b in batches for i in b["order_id"].tolist()]


def all_ids(client) -> list[int]:
    info = client.get_flight_info(flight.FlightDescriptor.for_path(*PRODUCT.split("/")))
    return sorted(client.do_get(info.endpoints[0].ticket).read_all().column("order_id").to_pylist())


def load(dataset, workers):
    # gRPC is not fork-safe: workers start as fresh interpreters.
    return ids(DataLoader(dataset, batch_size=None, num_workers=workers, multiprocessing_context="spawn"))


def test_four_workers_read_every_row_exactly_once(server, client):
    data = MeshgateDataset(f"grpc://{server.addr}", PRODUCT, columns=["order_id", "amount"], shards=8, seed=1)
    got = load(data, 4)
    assert sorted(got) == all_ids(client)
    assert len(got) == len(set(got))
    batch = next(iter(data))
    assert batch["order_id"].dtype == torch.int64 and isinstance(batch["amount"], torch.Tensor)


def test_the_same_seed_gives_the_same_order(server):
    location = f"grpc://{server.addr}"
    first = load(MeshgateDataset(location, PRODUCT, columns=["order_id"], shards=8, seed=7), 4)
    again = load(MeshgateDataset(location, PRODUCT, columns=["order_id"], shards=8, seed=7), 4)
    assert first == again
    other = MeshgateDataset(location, PRODUCT, columns=["order_id"], shards=8, seed=7)
    other.set_epoch(1)
    epoch1 = load(other, 4)
    assert epoch1 != first and sorted(epoch1) == sorted(first)


def test_ranks_and_their_workers_split_the_endpoints(server, client):
    location = f"grpc://{server.addr}"
    seen = []
    for rank in range(2):
        data = MeshgateDataset(location, PRODUCT, columns=["order_id"], shards=8, seed=3, rank=rank, world_size=2)
        seen.append(load(data, 2))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == all_ids(client)
    assert seen[0] and seen[1]


def test_a_token_reads_what_its_holder_may(secure):
    with secure.client() as c:
        header = c.authenticate_basic_token("alice", "alice-dev-password")
        token = header[1].decode().removeprefix("Bearer ")
        options = flight.FlightCallOptions(headers=[header])
        info = c.get_flight_info(flight.FlightDescriptor.for_path(*PRODUCT.split("/")), options)
        mine = c.do_get(info.endpoints[0].ticket, options).read_all()
    data = MeshgateDataset(f"grpc://{secure.addr}", PRODUCT, columns=["order_id", "region"], shards=4, token=token)
    batches = list(DataLoader(data, batch_size=None, num_workers=2, multiprocessing_context="spawn"))
    assert sorted(ids(batches)) == sorted(mine.column("order_id").to_pylist())
    assert {r for b in batches for r in b["region"]} == {"EMEA"}, "alice's row filter holds"


class Flaky:
    """A client whose first stream breaks after one batch, as when a connection drops."""

    def __init__(self, client):
        self.client, self.broken = client, False

    def do_get(self, ticket, options):
        for n, chunk in enumerate(self.client.do_get(ticket, options)):
            if n == 1 and not self.broken:
                self.broken = True
                raise flight.FlightUnavailableError("connection reset")
            yield chunk

    def close(self):
        self.client.close()


def test_a_broken_stream_continues_after_the_rows_it_gave(server, client):
    data = MeshgateDataset(f"grpc://{server.addr}", PRODUCT, shards=2)
    endpoint = flight.FlightEndpoint.deserialize(data.endpoints[0])
    whole = client.do_get(endpoint.ticket).read_all()
    flaky = Flaky(server.client())
    got = pa.Table.from_batches(list(data._read(flaky, endpoint)))
    assert flaky.broken
    assert got.equals(whole), "no row lost or repeated across the break"
