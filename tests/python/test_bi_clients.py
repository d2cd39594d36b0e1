"""The BI paths other than ADBC: SQLAlchemy through flightsql-dbapi (how Superset connects) and
polars reading through an ADBC connection."""

import polars as pl
import flightsql.sqlalchemy  # noqa: F401 (registers the datafusion+flightsql dialect)
import sqlalchemy
from sqlalchemy import inspect, text

from test_flight_sql import connect


def engine(server, user):
    host, port = server.addr.rsplit(":", 1)
    url = f"datafusion+flightsql://{user}:{user}-dev-password@{host}:{port}?insecure=true&feature-sqlalchemy-primary-keys=on"
    return sqlalchemy.create_engine(url)


def test_sqlalchemy_reflects_domains_and_tables_and_queries(secure):
    e = engine(secure, "alice")
    schemas = inspect(e).get_schema_names()
    assert {"sales", "customers", "logistics", "_mesh"} <= set(schemas)
    tables = inspect(e).get_table_names(schema="sales")
    assert "orders" in tables and "daily_revenue" not in tables
    columns = {c["name"]: c for c in inspect(e).get_columns("orders", schema="sales")}
    assert {"order_id", "region", "amount"} <= set(columns)
    assert inspect(e).get_pk_constraint("orders", schema="sales")["constrained_columns"] == ["order_id"]
    with e.connect() as conn:
        rows = conn.execute(text("SELECT region, count(*) AS n FROM sales.orders GROUP BY region")).fetchall()
    assert [r[0] for r in rows] == ["EMEA"], "the row filter holds through SQLAlchemy"


def test_polars_reads_through_adbc(secure):
    with connect(secure, "alice") as conn:
        df = pl.read_database("SELECT order_id, region FROM sales.orders ORDER BY order_id LIMIT 50", connection=conn)
    assert df.height == 50
    assert df["region"].unique().to_list() == ["EMEA"]
    assert df.schema["region"] == pl.String
