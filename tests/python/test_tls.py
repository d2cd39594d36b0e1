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


def test_client_certificates_are_identities(tmp_path, sample_mesh):
    """mTLS: a certificate from the configured CA is an identity with mapped roles; one from
    another CA is refused during the TLS handshake; no certificate and no token gets nothing."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for d in (ours, theirs):
        subprocess.run(["bash", str(REPO / "certs" / "make-dev-certs.sh"), str(d)], check=True, capture_output=True)
    (tmp_path / "gateway.secret").write_text("x" * 48)
    (tmp_path / "certs.yaml").write_text("identities:\n  alice: {roles: [analyst], attributes: {region: EMEA}}\n")
    (tmp_path / "auth.yaml").write_text("gateway: {secret_file: gateway.secret}\nmtls_identities: certs.yaml\n")
    server = Server(
        sample_mesh, "--no-watch",
        "--tls-cert", str(ours / "server.pem"), "--tls-key", str(ours / "server.key"),
        "--tls-client-ca", str(ours / "ca.pem"),
        "--auth", str(tmp_path / "auth.yaml"), "--audit-log", str(tmp_path / "audit"),
        secure=True,
    )
    try:
        ca = (ours / "ca.pem").read_bytes()
        url = f"grpc+tls://{server.addr}"
        with flight.connect(url, tls_root_certs=ca, cert_chain=(ours / "client.pem").read_bytes(), private_key=(ours / "client.key").read_bytes()) as c:
            info = c.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders"))
            orders = c.do_get(info.endpoints[0].ticket).read_all().to_pandas()
            assert set(orders["region"]) == {"EMEA"}, "the certificate's mapped attributes drive the row filter"
        with flight.connect(url, tls_root_certs=ca, cert_chain=(theirs / "client.pem").read_bytes(), private_key=(theirs / "client.key").read_bytes()) as c:
            with pytest.raises(flight.FlightUnavailableError):
                list(c.list_flights())
        with flight.connect(url, tls_root_certs=ca) as c:
            with pytest.raises(flight.FlightUnauthenticatedError):
                list(c.list_flights())
        # A certificate whose organisation reads `x, CN=alice` (after its CN) is mallory's, not alice's.
        mallory = tmp_path / "mallory"
        mallory.mkdir()
        subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=mallory/O=x, CN=alice", "-keyout", str(mallory / "k"), "-out", str(mallory / "csr")],
                       check=True, capture_output=True)
        (mallory / "ext").write_text("extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
        subprocess.run(["openssl", "x509", "-req", "-in", str(mallory / "csr"), "-CA", str(ours / "ca.pem"),
                        "-CAkey", str(ours / "ca.key"), "-CAcreateserial", "-days", "1", "-extfile", str(mallory / "ext"),
                        "-out", str(mallory / "pem")], check=True, capture_output=True)
        with flight.connect(url, tls_root_certs=ca, cert_chain=(mallory / "pem").read_bytes(), private_key=(mallory / "k").read_bytes()) as c:
            with pytest.raises((flight.FlightUnauthorizedError, flight.FlightServerError)) as refused:
                c.get_flight_info(flight.FlightDescriptor.for_path("sales", "orders"))
            assert "NOT_FOUND" in str(refused.value) or "not" in str(refused.value).lower()
            assert all(i.descriptor.path[1] != b"orders" for i in c.list_flights()), "alice's products are not mallory's"
    finally:
        server.stop()


def test_a_gateway_reads_another_over_tls(tmp_path, sample_mesh):
    """Federation over TLS: the remote's certificate must chain to `tlsRootCert`; a plain
    connection to a TLS gateway makes only that product unavailable."""
    import json

    from conftest import product, read

    certs = tmp_path / "certs"
    subprocess.run(["bash", str(REPO / "certs" / "make-dev-certs.sh"), str(certs)], check=True, capture_output=True)
    hq = Server(sample_mesh, "--no-watch", "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"))
    try:
        stores = tmp_path / "stores.yaml"
        stores.write_text(json.dumps({"flight": [
            {"name": "hq", "url": f"grpc+tls://{hq.addr}", "tlsRootCert": str(certs / "ca.pem")},
            {"name": "hq_plain", "url": f"grpc://{hq.addr}", "connectTimeout": "2s", "timeout": "5s"},
        ]}))
        mesh = tmp_path / "edge"
        columns = [("warehouse_id", None), ("city", "string")]
        product(mesh, "remote", "warehouses", columns,
                {"adapter": "flight", "server": "hq", "product": "logistics/warehouses"})
        product(mesh, "remote", "plain", columns,
                {"adapter": "flight", "server": "hq_plain", "product": "logistics/warehouses"})
        edge = Server(mesh, "--no-watch", "--stores", str(stores))
        try:
            with edge.client() as c:
                t = read(c, "remote", "warehouses")
                assert t.num_rows == 24 and t.column_names == ["warehouse_id", "city"]
                with pytest.raises(flight.FlightUnavailableError, match="server `hq_plain`"):
                    read(c, "remote", "plain")
        finally:
            edge.stop()
    finally:
        hq.stop()
