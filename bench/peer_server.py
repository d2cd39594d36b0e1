"""pyarrow's C++ Flight server serving one file: the speed peer.

    python peer_server.py FILE scan|mmap|memory

`scan` reads a Parquet file for every request (the same work as meshgate on a Parquet product);
`mmap` serves an Arrow IPC file memory-mapped, batch by batch (the fastest fair peer for an IPC
product); `memory` serves a table loaded once. Prints `ADDR host:port` when ready.
"""

import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as flight
import pyarrow.parquet as pq


class Peer(flight.FlightServerBase):
    def __init__(self, path, mode):
        super().__init__("grpc://127.0.0.1:0")
        self.path, self.mode = path, mode
        self.table = None
        if mode == "mmap":
            self.source = pa.memory_map(path)
            self.ipc = pa.ipc.open_file(self.source)
            self.schema = self.ipc.schema
        else:
            self.schema = pq.read_schema(path)
            if mode == "memory":
                self.table = pq.read_table(path)

    def get_flight_info(self, context, descriptor):
        endpoint = flight.FlightEndpoint(b"lineitem", [])
        return flight.FlightInfo(self.schema, descriptor, [endpoint], -1, -1)

    def do_get(self, context, ticket):
        if self.mode == "mmap":
            # The batches point straight into the mapped file: no copy, no decoding.
            return flight.RecordBatchStream(pa.ipc.open_file(self.source).read_all())
        if self.table is not None:
            return flight.RecordBatchStream(self.table)
        return flight.RecordBatchStream(ds.dataset(self.path).scanner().to_reader())


if __name__ == "__main__":
    server = Peer(sys.argv[1], sys.argv[2])
    print(f"ADDR 127.0.0.1:{server.port}", flush=True)
    server.serve()
