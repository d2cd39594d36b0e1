"""Flight SQL as BI tools and notebooks meet it: the ADBC Flight SQL driver (which prepares every
query) against the sample mesh served with authentication, governance and audit on."""

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pytest
from adbc_driver_flightsql import DatabaseOptions

from conftest import Server


def connect(server, user, **options):
    """An ADBC connection with a bearer token from a Basic sign-in."""
    with server.client() as c:
        _, token = c.authenticate_basic_token(user, f"{user}-dev-password")
    options[DatabaseOptions.AUTHORIZATION_HEADER.value] = token.decode()
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
        with pytest.raises(Exception, match="INVALID_ARGUMENT.*No field named nope"):
            query(alice, "SELECT nope FROM sales.orders")
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


def test_prepared_statements_bind_parameters(secure):
    with connect(secure, "carol") as carol, carol.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM sales.orders WHERE region = ?", parameters=("EMEA",))
        emea = cur.fetch_arrow_table().column("n")[0].as_py()
        cur.execute("SELECT count(*) AS n FROM sales.orders WHERE region = $1", parameters=("AMER",))
        amer = cur.fetch_arrow_table().column("n")[0].as_py()
        assert emea > 0 and amer > 0
        # A batch of N rows is N executions, results in row order.
        rows = pa.record_batch({"region": ["EMEA", "AMER", "NOWHERE"]})
        cur.execute("SELECT $1 AS region, count(*) AS n FROM sales.orders WHERE region = $1", parameters=rows)
        got = cur.fetch_arrow_table()
        assert got.column("region").to_pylist() == ["EMEA", "AMER", "NOWHERE"]
        assert got.column("n").to_pylist() == [emea, amer, 0]
        # Values are literals, never SQL.
        cur.execute("SELECT count(*) AS n FROM sales.orders WHERE region = ?", parameters=("x' OR '1'='1",))
        assert cur.fetch_arrow_table().column("n").to_pylist() == [0]
        with pytest.raises(Exception, match=r"2 parameter\(s\)"):
            cur.execute("SELECT * FROM sales.orders WHERE region = $1 AND amount > $2", parameters=("EMEA",))
            cur.fetch_arrow_table()
        with pytest.raises(Exception, match="bind values"):
            cur.execute("SELECT * FROM sales.orders WHERE region = $1")
            cur.fetch_arrow_table()
    with connect(secure, "alice") as alice, alice.cursor() as cur:
        # The row filter holds whatever is bound.
        cur.execute("SELECT count(*) AS n FROM sales.orders WHERE region = ?", parameters=("AMER",))
        assert cur.fetch_arrow_table().column("n").to_pylist() == [0]


def test_sessions_carry_the_current_schema(secure):
    cookies = {"adbc.flight.sql.rpc.with_cookie_middleware": "true"}
    with connect(secure, "alice", **cookies) as alice:
        assert alice.adbc_current_catalog == "mesh"
        alice.adbc_current_db_schema = "sales"
        assert alice.adbc_current_db_schema == "sales"
        regions = query(alice, "SELECT DISTINCT region FROM orders").column("region").to_pylist()
        assert regions == ["EMEA"], "unqualified names resolve in the session's schema, governed"
        with pytest.raises(Exception):
            alice.adbc_current_db_schema = "no_such_domain"
        assert alice.adbc_current_db_schema == "sales", "a refused option changes nothing"
        with pytest.raises(Exception):
            alice.adbc_current_catalog = "other"
    with connect(secure, "alice") as plain:
        with pytest.raises(Exception, match="(?i)not found"):
            query(plain, "SELECT * FROM orders")


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    home = tmp_path_factory.mktemp("bounded")
    s = Server(
        None,
        "--statement-max-rows", "100",
        "--statement-timeout", "2s",
        "--statement-memory-mb", "1",
        cwd=home,
        secure=True,
    )
    yield s
    s.stop()


def test_statements_are_bounded_and_the_server_keeps_serving(bounded):
    with connect(bounded, "carol") as carol:
        assert query(carol, "SELECT order_id FROM sales.orders LIMIT 100").num_rows == 100
        with pytest.raises(Exception, match="--statement-max-rows"):
            query(carol, "SELECT * FROM sales.orders")
        with pytest.raises(Exception, match="--statement-memory-mb"):
            query(carol, "SELECT array_agg(a.order_id) AS ids FROM sales.orders a CROSS JOIN sales.orders b")
        with pytest.raises(Exception, match="--statement-timeout"):
            query(carol, "SELECT count(*) AS n FROM sales.orders a, sales.orders b, sales.orders c, sales.orders d")
        with pytest.raises(Exception, match="(?i)syntax|parse|expected"):
            query(carol, "SELEC order_id FROM sales.orders")
        with pytest.raises(Exception, match=r"INVALID_ARGUMENT.*at most 1048576 bytes of SQL"):
            query(carol, "SELECT 1 AS one -- " + "x" * (10 << 20))
        # Every refusal left the server serving.
        assert query(carol, "SELECT count(*) AS n FROM sales.orders").column("n")[0].as_py() > 100


def column(conn, sql, name):
    return query(conn, sql).column(name).to_pylist()


def test_masks_and_row_filters_hold_through_any_sql(secure):
    with connect(secure, "carol") as carol:
        clear = column(carol, "SELECT email FROM customers.profiles ORDER BY customer_id LIMIT 1", "email")[0]
        emea = column(carol, "SELECT count(*) AS n FROM sales.orders WHERE region = 'EMEA'", "n")[0]
    assert "@" in clear
    with connect(secure, "alice") as alice:
        masked = [
            "SELECT * FROM customers.profiles",
            "SELECT email FROM customers.profiles GROUP BY email",
            "SELECT email FROM customers.profiles UNION ALL SELECT email FROM customers.profiles",
            "WITH x AS (SELECT email FROM customers.profiles) SELECT email FROM x",
            "SELECT first_value(email) OVER (ORDER BY customer_id) AS email FROM customers.profiles",
            "SELECT max(email) OVER (PARTITION BY email) AS email FROM customers.profiles",
            "SELECT (SELECT max(email) FROM customers.profiles) AS email",
        ]
        for sql in masked:
            emails = column(alice, sql, "email")
            assert emails and not any("@" in (e or "") for e in emails), sql
        reaching = [
            f"SELECT count(*) AS n FROM customers.profiles WHERE email = '{clear}'",
            "SELECT count(*) AS n FROM customers.profiles WHERE email LIKE '%@%'",
            f"SELECT count(*) AS n FROM customers.profiles p JOIN (VALUES ('{clear}')) v(e) ON p.email = v.e",
            "SELECT count(*) AS n FROM customers.profiles WHERE customer_id IN "
            f"(SELECT customer_id FROM customers.profiles WHERE email = '{clear}')",
            "SELECT count(*) AS n FROM customers.profiles WHERE strpos(email, '@') > 0",
        ]
        for sql in reaching:
            assert column(alice, sql, "n") == [0], sql
        ordered = column(alice, "SELECT email FROM customers.profiles ORDER BY email", "email")
        assert ordered == sorted(ordered), "ORDER BY sorts the masked values, not the clear ones"

        # Row filters hold in joins, subqueries and aggregates.
        assert column(alice, "SELECT DISTINCT o.region FROM sales.orders o JOIN customers.profiles c "
                             "ON o.customer_id = c.customer_id", "region") == ["EMEA"]
        assert column(alice, "SELECT count(*) AS n FROM customers.profiles c WHERE EXISTS "
                             "(SELECT 1 FROM sales.orders o WHERE o.customer_id = c.customer_id "
                             "AND o.region <> 'EMEA')", "n") == [0]
        # An expression that would fail on a hidden row never sees one.
        probe = ("SELECT count(*) AS n FROM sales.orders "
                 "WHERE CAST(CASE WHEN region = 'EMEA' THEN '1' ELSE 'x' END AS INT) = 1")
        assert column(alice, probe, "n") == [emea]

        # EXPLAIN says where governance applies, not what it hides or where data lives.
        plan = "\n".join(column(alice, "EXPLAIN SELECT * FROM sales.orders o JOIN customers.profiles c "
                                       "ON o.customer_id = c.customer_id", "plan"))
        assert "GuardExec" in plan and "GovernedScan" in plan
        assert "EMEA" not in plan and "principal" not in plan
        assert ".parquet" not in plan and ".csv" not in plan and "/mesh" not in plan
        with pytest.raises(Exception, match="EXPLAIN ANALYZE is not served"):
            query(alice, "EXPLAIN ANALYZE SELECT * FROM sales.orders")


def test_the_audit_record_names_every_product_column_and_policy(secure):
    from test_audit import records

    with connect(secure, "alice") as alice:
        sql = ("SELECT o.region, count(DISTINCT c.email) AS n FROM sales.orders o "
               "JOIN customers.profiles c ON o.customer_id = c.customer_id GROUP BY o.region")
        assert column(alice, sql, "region") == ["EMEA"]
    reads = [r for r in records(secure.home / ".meshgate" / "audit")
             if r["kind"] == "read" and r["rpc"] == "DoGet" and r["actor"]["sub"] == "alice" and "resources" in r]
    last = reads[-1]
    read = {f'{x["domain"]}/{x["product"]}': set(x["columns"]) for x in last["resources"]}
    assert set(read) == {"sales/orders", "customers/profiles"}, last
    assert read["sales/orders"] == {"customer_id", "region"}, "the columns each product gave the plan"
    assert read["customers/profiles"] == {"customer_id", "email"}
    decision = last["decision"]
    assert decision["row_filters"] and any("email" in m for m in decision["masks"]), decision
    assert decision["policy_ids"], decision
