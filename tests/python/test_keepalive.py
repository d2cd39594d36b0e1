"""Long streams through proxies: connections get HTTP/2 pings, and a reader that asks for them
(`x-meshgate-keepalive`) gets empty keep-alive messages while its stream is quiet. Nobody gets
them unasked: pyarrow's `read_all` ends at the first message without data (shown below)."""

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import Server


@pytest.fixture(scope="module")
def eager(sample_mesh):
    """A gateway that pings every connection every second."""
    s = Server(sample_mesh, "--no-watch", "--http2-keepalive", "1s")
    yield s
    s.stop()


def varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field(number, payload):
    return bytes([number << 3 | 2]) + varint(len(payload)) + payload


def statement(sql):
    """A Flight SQL `CommandStatementQuery` packed in `Any`, as Flight SQL clients send it."""
    command = field(1, sql.encode())
    type_url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return flight.FlightDescriptor.for_command(field(1, type_url) + field(2, command))


# An aggregation: nothing leaves until every row was read, a quiet period far over 1 ms.
QUERY = "SELECT region, count(*) AS n, sum(amount) AS total FROM sales.orders GROUP BY region ORDER BY region"


def raw_messages(gateway, descriptor, metadata=()):
    """The `FlightData` messages of a read as bytes off the wire (a plain gRPC client)."""
    import grpc
    with gateway.client() as c:
        ticket = c.get_flight_info(descriptor).endpoints[0].ticket.ticket
    with grpc.insecure_channel(gateway.addr) as channel:
        do_get = channel.unary_stream("/arrow.flight.protocol.FlightService/DoGet",
                                      request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return list(do_get(field(1, ticket), metadata=list(metadata)))


def without_keepalives(messages):
    return [m for m in messages if m != b""]


def test_keepalive_messages_only_for_readers_that_ask(eager):
    # Asked: empty messages (no IPC header, no body, no metadata) while the aggregation runs,
    # around exactly the messages an unasked read gets.
    asked = raw_messages(eager, statement(QUERY), [("x-meshgate-keepalive", "1ms")])
    plain = raw_messages(eager, statement(QUERY))
    assert sum(1 for m in asked if m == b"") > 0, "the aggregation kept the stream quiet for over 1 ms"
    assert all(m != b"" for m in plain), "none unasked"
    assert len(without_keepalives(asked)) == len(plain)
    import grpc
    with pytest.raises(grpc.RpcError, match="x-meshgate-keepalive is a duration"):
        raw_messages(eager, statement(QUERY), [("x-meshgate-keepalive", "soon")])
    # Why never unasked: pyarrow (Arrow C++ Flight) ends `read_all` at the first such message.
    with eager.client() as c:
        expected = c.do_get(c.get_flight_info(statement(QUERY)).endpoints[0].ticket).read_all()
        assert expected.num_rows == 4
        opts = flight.FlightCallOptions(headers=[(b"x-meshgate-keepalive", b"1ms")])
        cut = c.do_get(c.get_flight_info(statement(QUERY)).endpoints[0].ticket, opts).read_all()
        assert cut.num_rows < expected.num_rows
    # The Flight SQL driver (C++, through ADBC) reads the pinged connection as usual.
    with flight_sql.connect(f"grpc://{eager.addr}") as conn, conn.cursor() as cur:
        cur.execute(QUERY)
        got = cur.fetch_arrow_table()
        # A parallel float sum adds in whichever order partitions finish: equal up to rounding.
        assert got.drop_columns(["total"]).equals(expected.drop_columns(["total"]))
        assert got["total"].to_pylist() == pytest.approx(expected["total"].to_pylist(), rel=1e-12)
