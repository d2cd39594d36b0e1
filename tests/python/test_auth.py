"""Authentication, masks, row filters and ticket binding as a pyarrow user meets them, on the
sample mesh served exactly as `meshgate serve` serves it with no arguments."""

import json
import subprocess

import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import BIN


def login(server, user, password=None):
    client = server.client()
    header = client.authenticate_basic_token(user, password or f"{user}-dev-password")
    return client, flight.FlightCallOptions(headers=[header])


def read(client, descriptor, options):
    info = client.get_flight_info(descriptor, options=options)
    return pa.concat_tables([client.do_get(e.ticket, options=options).read_all() for e in info.endpoints])


def test_no_credentials_no_metadata(secure):
    with secure.client() as c:
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(c.list_flights())
        # pyarrow raises a plain OSError for this call; the gRPC code is in the message.
        with pytest.raises(OSError, match="unauthenticated"):
            c.get_schema(flight.FlightDescriptor.for_path("sales", "orders"))
        with pytest.raises(flight.FlightUnauthenticatedError):
            c.authenticate_basic_token("alice", "not-her-password")


def test_pii_is_masked_unless_allowed(secure):
    alice, a_opts = login(secure, "alice")
    profiles = read(alice, flight.FlightDescriptor.for_path("customers", "profiles"), a_opts).to_pandas()
    assert (profiles["email"] == "***").all() and profiles["birth_date"].isna().all()
    carol, c_opts = login(secure, "carol")
    clear = read(carol, flight.FlightDescriptor.for_path("customers", "profiles"), c_opts).to_pandas()
    assert clear["email"].str.contains("@").all()
    assert len(clear) == len(profiles) == 50_000


def test_rows_are_filtered_by_region(secure):
    alice, opts = login(secure, "alice")
    orders = read(alice, flight.FlightDescriptor.for_path("sales", "orders"), opts).to_pandas()
    assert set(orders["region"]) == {"EMEA"}
    query = json.dumps({"product": "sales/orders", "filter": "region = 'AMER'"})
    assert read(alice, flight.FlightDescriptor.for_command(query), opts).num_rows == 0


def test_cli_token_and_ticket_binding(secure):
    token = subprocess.run(
        [str(BIN), "token", "issue", "--sub", "bob", "--roles", "analyst", "--attr", "region=AMER"],
        cwd=secure.home, check=True, capture_output=True, text=True,
    ).stdout.strip()
    bob_opts = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
    alice, a_opts = login(secure, "alice")
    info = alice.get_flight_info(flight.FlightDescriptor.for_path("logistics", "warehouses"), options=a_opts)
    with secure.client() as bob:
        with pytest.raises(flight.FlightUnauthorizedError, match="another principal"):
            bob.do_get(info.endpoints[0].ticket, options=bob_opts).read_all()
        mine = bob.get_flight_info(flight.FlightDescriptor.for_path("logistics", "warehouses"), options=bob_opts)
        assert bob.do_get(mine.endpoints[0].ticket, options=bob_opts).read_all().num_rows == 24


def test_the_readme_query_returns_what_alice_may_see(secure):
    """The README's filtered read, as alice: filters see what she sees (masked `amount` is null
    for her), so the example filters on columns she reads in clear."""
    alice, opts = login(secure, "alice")
    query = {"product": "sales/orders", "columns": ["order_id", "order_date", "status"],
             "filter": "status = 'shipped' AND order_date >= DATE '2024-06-01'", "limit": 1000}
    shipped = read(alice, flight.FlightDescriptor.for_command(json.dumps(query)), opts).to_pandas()
    whole = read(alice, flight.FlightDescriptor.for_path("sales", "orders"), opts).to_pandas()
    expected = whole[(whole["status"] == "shipped") & (whole["order_date"] >= pd.Timestamp("2024-06-01").date())]
    assert len(shipped) == min(len(expected), 1000)
    assert len(shipped) > 0 and set(shipped["status"]) == {"shipped"}
    assert whole["amount"].isna().all(), "amount is masked for alice"


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (enough to wrap a message in a request message)."""
    n, varint = len(payload), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        varint += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([number << 3 | 2]) + varint + payload


def only_result(client, action, options):
    return list(client.do_action(action, options=options))[0].body.to_pybytes()


def test_cancel_and_renew_are_for_the_tickets_owner(secure):
    alice, a_opts = login(secure, "alice")
    bob, b_opts = login(secure, "bob")
    info = alice.get_flight_info(flight.FlightDescriptor.for_path("logistics", "warehouses"), options=a_opts)
    cancel = flight.Action("CancelFlightInfo", field(1, info.serialize()))
    assert only_result(alice, cancel, a_opts) == b"\x08\x01", "CANCEL_STATUS_CANCELLED"
    with pytest.raises(flight.FlightUnauthorizedError, match="another principal"):
        only_result(bob, cancel, b_opts)

    renew = flight.Action("RenewFlightEndpoint", field(1, info.endpoints[0].serialize()))
    renewed = flight.FlightEndpoint.deserialize(only_result(alice, renew, a_opts))
    assert renewed.ticket.ticket != info.endpoints[0].ticket.ticket
    assert renewed.expiration_time is not None
    assert alice.do_get(renewed.ticket, options=a_opts).read_all().num_rows == 24
    with pytest.raises(flight.FlightUnauthorizedError, match="another principal"):
        only_result(bob, renew, b_opts)
