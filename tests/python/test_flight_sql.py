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


def names(objects, depth):
    """Flattens `adbc_get_objects` output to the names at `depth` (schemas, tables, columns)."""
    out = []
    for catalog in objects:
        for schema in catalog["catalog_db_schemas"] or []:
            if depth == "schemas":
                out.append(schema["db_schema_name"])
                continue
            for table in schema["db_schema_tables"] or []:
                if depth == "tables":
                    out.append(f'{schema["db_schema_name"]}.{table["table_name"]}')
                    continue
                for column in table["table_columns"] or []:
                    out.append(f'{schema["db_schema_name"]}.{table["table_name"]}.{column["column_name"]}')
    return out


def test_the_catalog_as_bi_tools_browse_it(secure):
    with connect(secure, "alice") as alice:
        info = alice.adbc_get_info()
        assert info["vendor_name"] == "meshgate"
        assert info["vendor_version"]
        assert info["vendor_arrow_version"]

        catalogs = alice.adbc_get_objects(depth="catalogs").read_all().to_pylist()
        assert [c["catalog_name"] for c in catalogs] == ["mesh"]
        assert all(not c["catalog_db_schemas"] for c in catalogs), "depth=catalogs stops at catalogs"

        schemas = names(alice.adbc_get_objects(depth="db_schemas").read_all().to_pylist(), "schemas")
        assert {"sales", "customers", "logistics", "_mesh"} <= set(schemas)

        tables = names(alice.adbc_get_objects(depth="tables").read_all().to_pylist(), "tables")
        assert "sales.orders" in tables and "_mesh.products" in tables
        assert "sales.daily_revenue" not in tables, "an undiscoverable product is not listed"

        columns = alice.adbc_get_objects(depth="all", db_schema_filter="sales", table_name_filter="orders")
        columns = names(columns.read_all().to_pylist(), "columns")
        assert "sales.orders.order_id" in columns and "sales.orders.region" in columns

        filtered = alice.adbc_get_objects(depth="tables", table_name_filter="ord%").read_all().to_pylist()
        assert names(filtered, "tables") == ["sales.orders", "sales.orders__v1"], "default port, then each port"

        schema = alice.adbc_get_table_schema("orders", db_schema_filter="sales")
        streamed = query(alice, "SELECT * FROM sales.orders LIMIT 1").schema
        assert schema.names == streamed.names
        assert [f.type for f in schema] == [f.type for f in streamed]

        assert set(alice.adbc_get_table_types()) == {"TABLE", "SYSTEM TABLE"}

        with alice.cursor() as cur:
            announced = cur.adbc_execute_schema("SELECT order_id, region FROM sales.orders")
            assert announced.names == ["order_id", "region"]

        with pytest.raises(Exception, match="(?i)not.found"):
            alice.adbc_get_table_schema("daily_revenue", db_schema_filter="sales")
    with connect(secure, "carol") as carol:
        tables = names(carol.adbc_get_objects(depth="tables").read_all().to_pylist(), "tables")
        assert "sales.daily_revenue" in tables


def test_system_tables_describe_the_mesh(secure):
    with connect(secure, "alice") as alice:
        products = query(alice, "SELECT domain, product, owner FROM _mesh.products ORDER BY domain, product")
        pairs = list(zip(products.column("domain").to_pylist(), products.column("product").to_pylist()))
        assert ("sales", "orders") in pairs and ("sales", "daily_revenue") not in pairs
        assert all(products.column("owner").to_pylist())
