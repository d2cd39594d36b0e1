"""Flight SQL as BI tools and notebooks meet it: the ADBC Flight SQL driver (which prepares every
query) against the sample mesh served with authentication, governance and audit on."""

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow.flight as flight
import pytest
from adbc_driver_flightsql import DatabaseOptions

from conftest import Server


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    s = Server(None, cwd=home, secure=True)
    yield s
    s.stop()


def connect(server, user):
    """An ADBC connection with a bearer token from a Basic sign-in."""
    with server.client() as c:
        _, token = c.authenticate_basic_token(user, f"{user}-dev-password")
    options = {DatabaseOptions.AUTHORIZATION_HEADER.value: token.decode()}
    return flight_sql.connect(f"grpc://{server.addr}", db_kwargs=options)


def query(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def test_statements_read_the_callers_governed_tables(secure):
    with connect(secure, "alice") as alice:
        by_region = query(alice, "SELECT region, count(*) AS n FROM sales.orders GROUP BY region")
        assert by_region.column("region").to_pylist() == ["EMEA"], "the row filter holds in SQL"
        total = query(alice, "SELECT count(*) AS n FROM mesh.sales.orders").column("n")[0].as_py()
        assert total == by_region.column("n")[0].as_py()
        emails = query(alice, "SELECT email FROM customers.profiles LIMIT 50").column("email").to_pylist()
        assert emails and not any("@" in e for e in emails), "pii stays masked"
        hidden = query(alice, "SELECT * FROM sales.orders WHERE region <> 'EMEA'")
        assert hidden.num_rows == 0
    with connect(secure, "carol") as carol:
        emails = query(carol, "SELECT email FROM customers.profiles LIMIT 5").column("email").to_pylist()
        assert all("@" in e for e in emails), "a privacy officer reads pii in clear"


def test_refusals_are_clear(secure):
    with connect(secure, "pat") as pat:
        with pytest.raises(Exception, match="may not read `sales/orders`"):
            query(pat, "SELECT * FROM sales.orders")
    with connect(secure, "alice") as alice:
        with pytest.raises(Exception, match="only queries"):
            query(alice, "CREATE TABLE t AS SELECT 1")
        with pytest.raises(Exception, match="not found"):
            query(alice, "SELECT * FROM sales.nope")
        # The connection still works after refusals.
        assert query(alice, "SELECT 1 AS one").column("one").to_pylist() == [1]


def test_without_a_token_nothing_is_planned(secure):
    with flight_sql.connect(f"grpc://{secure.addr}") as anonymous:
        with pytest.raises(Exception, match="(?i)unauthenticated|credentials|token"):
            query(anonymous, "SELECT 1")
