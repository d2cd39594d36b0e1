"""OpenTelemetry tracing from the outside: a real OTLP/gRPC collector (the protocol's own
service definitions, served by grpcio on 127.0.0.1) receives one span per RPC, joined to the
caller's W3C trace context, naming the RPC, the principal, the product and the outcome."""

import os
import queue
import secrets
import time
from concurrent import futures

import grpc
import pyarrow.flight as flight
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import Server


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that hands every exported span to the test."""

    def __init__(self):
        self.spans = queue.Queue()

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.put((resource, span))
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, predicate, timeout=60):
        """The first span `predicate` accepts, waiting for exports (not a fixed time)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no such span was exported")
            try:
                resource, span = self.spans.get(timeout=left)
            except queue.Empty:
                raise AssertionError("no such span was exported") from None
            if predicate(span):
                return resource, span


def attributes(span):
    out = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind)
    return out


@pytest.fixture(scope="module")
def collector():
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    yield receiver
    server.stop(grace=None)


@pytest.fixture(scope="module")
def traced(collector, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    # Export often, so the test waits for spans for milliseconds rather than the default 5 s.
    s = Server(None, "--otlp-endpoint", collector.endpoint, cwd=home, secure=True,
               env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    yield s
    s.stop()


def test_each_rpc_is_a_span_in_the_callers_trace(collector, traced):
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    with traced.client() as c:
        token = c.authenticate_basic_token("alice", "alice-dev-password")
        options = flight.FlightCallOptions(headers=[token, (b"traceparent", f"00-{trace_id}-{parent_id}-01".encode())])
        info = c.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders"), options)
        rows = c.do_get(info.endpoints[0].ticket, options).read_all().num_rows
        # NOT_FOUND (pyarrow raises it as a KeyError).
        with pytest.raises(KeyError):
            c.get_flight_info(flight.FlightDescriptor.for_path("sales", "nothing_here"), options)
    assert rows > 0

    def of(rpc):
        return lambda s: s.trace_id.hex() == trace_id and attributes(s).get("rpc.method") == rpc

    resource, span = collector.wait_for(of("DoGet"))
    assert resource["service.name"] == "meshgate"
    assert span.parent_span_id.hex() == parent_id
    assert span.kind == span.SPAN_KIND_SERVER
    attrs = attributes(span)
    assert attrs["rpc.system"] == "grpc" and attrs["rpc.service"] == "arrow.flight.protocol.FlightService"
    assert attrs["enduser.id"] == "alice"
    assert attrs["meshgate.product"] == "sales/orders"
    assert attrs["rpc.grpc.status_code"] == 0
    # The span lasts until the stream's last message, not until the handler returned.
    assert span.end_time_unix_nano > span.start_time_unix_nano

    _, failed = collector.wait_for(lambda s: of("GetFlightInfo")(s) and attributes(s).get("rpc.grpc.status_code") == 5)
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    assert attributes(failed)["enduser.id"] == "alice"


def test_a_call_without_trace_context_starts_its_own_trace(collector, traced):
    with traced.client() as c:
        token = c.authenticate_basic_token("bob", "bob-dev-password")
        options = flight.FlightCallOptions(headers=[token])
        list(c.list_flights(options=options))
    _, span = collector.wait_for(
        lambda s: attributes(s).get("rpc.method") == "ListFlights" and attributes(s).get("enduser.id") == "bob")
    assert len(span.trace_id) == 16 and span.parent_span_id == b""
