"""Training on a meshgate data product with PyTorch: an `IterableDataset` over sharded endpoints.

    from torch.utils.data import DataLoader
    from torch_dataset import MeshgateDataset

    data = MeshgateDataset("grpc+tls://meshgate.example:8815", "sales/orders",
                           columns=["amount", "quantity"], seed=42, token=os.environ["MESHGATE_TOKEN"])
    loader = DataLoader(data, batch_size=None, num_workers=4)
    for epoch in range(10):
        data.set_epoch(epoch)          # a new, reproducible order for each epoch
        for batch in loader:           # a dict of column name -> tensor, one record batch each
            ...

How the work is split:

- The training process asks meshgate once per epoch (in the constructor and in `set_epoch`) for
  the product split into `shards` endpoints, with the epoch's shuffle seed (`seed + epoch`). The
  endpoints are signed tickets; they travel to the `DataLoader` workers with the dataset, so
  every worker of every rank works from the same assignment.
- Worker `w` of `W` on rank `r` of `R` (from `torch.distributed` when it is initialised, else
  the `RANK` / `WORLD_SIZE` environment variables) reads the endpoints `i` with
  `i % (R * W) == r * W + w`: each endpoint is read by exactly one worker, so each row once.
  Ask for a multiple of `R * W` shards to keep workers evenly loaded.
- The same seed gives the same endpoints in the same order with the same rows in each, so an
  epoch is reproducible; `DataLoader` interleaves its workers' batches in a fixed order.
- A worker whose stream breaks (the gateway restarted, the network dropped) continues its
  endpoint after the rows it already has (`x-meshgate-offset`), renewing the ticket first
  (`RenewFlightEndpoint`) when it has expired.

Only `pyarrow` and `torch` are needed; the file is self-contained so it can be copied into a
training repository.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.flight as flight
import torch
from torch.utils.data import IterableDataset, get_worker_info

OFFSET_HEADER = b"x-meshgate-offset"
# Errors after which a stream is worth continuing on a new connection.
TRANSIENT = (flight.FlightUnavailableError, flight.FlightTimedOutError, flight.FlightInternalError)


def to_tensors(batch: pa.RecordBatch) -> dict[str, torch.Tensor | list]:
    """The default transform: numeric and boolean columns as tensors (nulls are not allowed in
    them), any other column as a Python list."""
    out: dict[str, torch.Tensor | list] = {}
    for name, column in zip(batch.schema.names, batch.columns):
        t = column.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            out[name] = torch.from_numpy(column.to_numpy(zero_copy_only=False, writable=True))
        elif pa.types.is_decimal(t):
            out[name] = torch.from_numpy(column.cast(pa.float64()).to_numpy(zero_copy_only=False, writable=True))
        else:
            out[name] = column.to_pylist()
    return out


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field: wraps the endpoint in a RenewFlightEndpointRequest."""
    n, varint = len(payload), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        varint += bytes([byte | (0x80 if n else 0)])
        if not n:
            return bytes([number << 3 | 2]) + varint + payload


class MeshgateDataset(IterableDataset):
    """One meshgate product read as sharded endpoints, split across `DataLoader` workers and
    distributed ranks; every row is yielded exactly once per epoch."""

    def __init__(
        self,
        location: str,
        product: str,
        *,
        columns: list[str] | None = None,
        filter: str | None = None,
        shards: int = 16,
        seed: int | None = None,
        token: str | None = None,
        transform: Callable[[pa.RecordBatch], object] = to_tensors,
        rank: int | None = None,
        world_size: int | None = None,
        retries: int = 3,
    ):
        super().__init__()
        self.location, self.product = location, product
        self.columns, self.filter, self.shards, self.seed = columns, filter, shards, seed
        self.token, self.transform, self.retries = token, transform, retries
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.endpoints = self._plan()

    # The training process: one GetFlightInfo per epoch.

    def set_epoch(self, epoch: int) -> None:
        """Plans epoch `epoch`: with a seed, its own reproducible order (`seed + epoch`)."""
        self.epoch = epoch
        self.endpoints = self._plan()

    def _plan(self) -> list[bytes]:
        query = {"product": self.product, "shards": self.shards}
        if self.columns:
            query["columns"] = self.columns
        if self.filter:
            query["filter"] = self.filter
        if self.seed is not None:
            query["shuffle_seed"] = self.seed + self.epoch
        with flight.connect(self.location) as client:
            info = client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(query)), self._options())
        # Serialized, so the dataset pickles into worker processes.
        return [e.serialize() for e in info.endpoints]

    # Each worker: its endpoints, read to the end.

    def __iter__(self) -> Iterator[object]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        rank, world = self._rank()
        slots, slot = world * workers, rank * workers + worker_id
        mine = [flight.FlightEndpoint.deserialize(e) for i, e in enumerate(self.endpoints) if i % slots == slot]
        client = flight.connect(self.location)
        try:
            for endpoint in mine:
                for batch in self._read(client, endpoint):
                    yield self.transform(batch)
        finally:
            client.close()

    def _rank(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def _read(self, client: flight.FlightClient, endpoint: flight.FlightEndpoint) -> Iterator[pa.RecordBatch]:
        """The endpoint's record batches; a broken stream continues after the rows it gave."""
        rows, failures = 0, 0
        while True:
            endpoint = self._fresh(client, endpoint)
            headers = [(OFFSET_HEADER, str(rows).encode())] if rows else []
            try:
                for chunk in client.do_get(endpoint.ticket, self._options(headers)):
                    rows += chunk.data.num_rows
                    yield chunk.data
                return
            except TRANSIENT:
                failures += 1
                if failures > self.retries:
                    raise
                client.close()
                client = flight.connect(self.location)

    def _fresh(self, client: flight.FlightClient, endpoint: flight.FlightEndpoint) -> flight.FlightEndpoint:
        """`endpoint`, renewed when its ticket has expired (or will within a minute)."""
        if endpoint.expiration_time is None:
            return endpoint
        expires = endpoint.expiration_time.cast(pa.timestamp("us", "UTC"), safe=False).as_py()
        if expires > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1):
            return endpoint
        action = flight.Action("RenewFlightEndpoint", _field(1, endpoint.serialize()))
        body = next(iter(client.do_action(action, self._options()))).body.to_pybytes()
        return flight.FlightEndpoint.deserialize(body)

    def _options(self, headers: list[tuple[bytes, bytes]] = ()) -> flight.FlightCallOptions:
        auth = [(b"authorization", f"Bearer {self.token}".encode())] if self.token else []
        return flight.FlightCallOptions(headers=[*auth, *headers])
