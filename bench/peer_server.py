"""pyarrow's C++ Flight server serving one Parquet file: the speed peer.

    python peer_server.py FILE scan|memory

`scan` reads the file for every request (same work as meshgate); `memory` serves a table loaded
once. Prints `ADDR host:port` when ready.
"""

import sys

import pyarrow.dataset as ds
import pyarrow.flight as flight
import pyarrow.parquet as pq


class Peer(flight.FlightServerBase):
    def __init__(self, path, mode):
        super().__init__("grpc://127.0.0.1:0")
        self.path, self.mode = path, mode
        self.table = pq.read_table(path) if mode == "memory" else None
        self.schema = pq.read_schema(path)

    def get_flight_info(self, context, descriptor):
        endpoint = flight.FlightEndpoint(b"lineitem", [])
        return flight.FlightInfo(self.schema, descriptor, [endpoint], -1, -1)

    def do_get(self, context, ticket):
        if self.table is not None:
            return flight.RecordBatchStream(self.table)
        return flight.RecordBatchStream(ds.dataset(self.path).scanner().to_reader())


if __name__ == "__main__":
    server = Peer(sys.argv[1], sys.argv[2])
    print(f"ADDR 127.0.0.1:{server.port}", flush=True)
    server.serve()
