"""TLS with the development certificates from certs/make-dev-certs.sh."""

import subprocess

import pyarrow.flight as flight
import pytest

from conftest import REPO, Server


def test_tls_serves_and_plaintext_is_refused(tmp_path, sample_mesh):
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(REPO / "certs" / "make-dev-certs.sh"), str(certs)], check=True, capture_output=True)
    server = Server(sample_mesh, "--no-watch", "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"))
    try:
        ca = (certs / "ca.pem").read_bytes()
        with flight.connect(f"grpc+tls://{server.addr}", tls_root_certs=ca) as c:
            assert len(list(c.list_flights())) == 5
            info = c.get_flight_info(flight.FlightDescriptor.for_path("logistics", "warehouses"))
            assert c.do_get(info.endpoints[0].ticket).read_all().num_rows == 24
        with flight.connect(f"grpc://{server.addr}") as plain:
            with pytest.raises(flight.FlightUnavailableError):
                list(plain.list_flights())
    finally:
        server.stop()
