//! Flight SQL through arrow-rs's `FlightSqlServiceClient`, against the sample mesh with
//! authentication, governance and audit on: metadata as each caller may see it, statements and
//! prepared statements.

mod common;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Schema;
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetTables, CommandGetXdbcTypeInfo, SqlInfo,
};
use common::secure::Secure;
use futures::TryStreamExt;
use tonic::transport::Channel;

async fn sql_client(s: &Secure, user: &str) -> FlightSqlServiceClient<Channel> {
    let token = s.login(user).await;
    let channel =
        Channel::from_shared(format!("http://{}", s.gateway().local_addr())).unwrap().connect().await.unwrap();
    let mut c = FlightSqlServiceClient::new(channel);
    c.set_token(token);
    c
}

async fn fetch(c: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut out = vec![];
    for e in info.endpoint {
        let stream = c.do_get(e.ticket.unwrap()).await.unwrap();
        out.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    out
}

/// Column `name` of every batch, as text.
fn texts(batches: &[RecordBatch], name: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(name).unwrap().as_string::<i32>().clone();
            (0..a.len()).map(move |i| a.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect()
}

async fn tables(
    c: &mut FlightSqlServiceClient<Channel>,
    schema: Option<&str>,
    include_schema: bool,
) -> Vec<RecordBatch> {
    let info = c
        .get_tables(CommandGetTables {
            catalog: Some("mesh".into()),
            db_schema_filter_pattern: schema.map(str::to_string),
            include_schema,
            ..Default::default()
        })
        .await
        .unwrap();
    fetch(c, info).await
}

#[tokio::test]
async fn catalogs_schemas_and_tables_are_what_the_caller_may_discover() {
    let s = Secure::start().await;
    let mut alice = sql_client(&s, "alice").await;
    let info = alice.get_catalogs().await.unwrap();
    assert_eq!(texts(&fetch(&mut alice, info).await, "catalog_name"), ["mesh"]);

    let info = alice.get_db_schemas(CommandGetDbSchemas::default()).await.unwrap();
    let schemas = texts(&fetch(&mut alice, info).await, "db_schema_name");
    assert_eq!(schemas, ["_mesh", "customers", "logistics", "sales"], "no _governance for an analyst");

    let listed = tables(&mut alice, Some("sales"), false).await;
    let names = texts(&listed, "table_name");
    assert!(names.contains(&"orders".to_string()) && names.contains(&"orders__v1".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("daily_revenue")), "restricted products are not listed: {names:?}");
    let info = alice.execute("SELECT * FROM sales.daily_revenue".into(), None).await.unwrap_err();
    let missing = alice.execute("SELECT * FROM sales.no_such_product".into(), None).await.unwrap_err();
    assert_eq!(
        info.to_string().replace("daily_revenue", "X"),
        missing.to_string().replace("no_such_product", "X"),
        "an undiscoverable product and a missing one fail alike"
    );

    let mut carol = sql_client(&s, "carol").await;
    let names = texts(&tables(&mut carol, Some("sales"), false).await, "table_name");
    assert!(names.contains(&"daily_revenue".to_string()), "{names:?}");

    // `include_schema`: the table's schema as the caller reads it, equal to a statement's.
    let listed = tables(&mut alice, Some("sales"), true).await;
    let batch = &listed[0];
    let row = (0..batch.num_rows()).find(|i| batch.column(2).as_string::<i32>().value(*i) == "orders").unwrap();
    let ipc = batch.column_by_name("table_schema").unwrap().as_binary::<i32>().value(row).to_vec();
    let listed_schema = Schema::try_from(arrow_flight::IpcMessage(ipc.into())).unwrap();
    let info = alice.execute("SELECT * FROM sales.orders".into(), None).await.unwrap();
    let announced = Schema::try_from(info.clone()).unwrap();
    assert_eq!(listed_schema, announced);
    let streamed = fetch(&mut alice, info).await;
    assert_eq!(streamed[0].schema().as_ref(), &announced, "announced and streamed schemas are equal");
    let amount = announced.field_with_name("amount").unwrap().metadata();
    assert_eq!(amount["ARROW:FLIGHT:SQL:TYPE_NAME"], "DOUBLE");
    assert!(amount.contains_key("ARROW:FLIGHT:SQL:REMARKS"), "{amount:?}");

    let info = alice.get_table_types().await.unwrap();
    assert_eq!(texts(&fetch(&mut alice, info).await, "table_type"), ["SYSTEM TABLE", "TABLE"]);
    s.stop().await;
}

#[tokio::test]
async fn keys_come_from_the_contracts() {
    let s = Secure::start().await;
    let mut alice = sql_client(&s, "alice").await;
    let pk = CommandGetPrimaryKeys { db_schema: Some("sales".into()), table: "orders".into(), ..Default::default() };
    let info = alice.get_primary_keys(pk).await.unwrap();
    assert_eq!(texts(&fetch(&mut alice, info).await, "column_name"), ["order_id"]);

    let imported =
        CommandGetImportedKeys { db_schema: Some("logistics".into()), table: "shipments".into(), ..Default::default() };
    let info = alice.get_imported_keys(imported).await.unwrap();
    let keys = fetch(&mut alice, info).await;
    assert_eq!(texts(&keys, "pk_table_name"), ["orders", "warehouses"]);
    assert_eq!(texts(&keys, "fk_column_name"), ["order_id", "warehouse_id"]);

    let exported =
        CommandGetExportedKeys { db_schema: Some("sales".into()), table: "orders".into(), ..Default::default() };
    let info = alice.get_exported_keys(exported).await.unwrap();
    let keys = fetch(&mut alice, info).await;
    // Each of shipments' names (default port and `__v1`) refers to orders.
    assert_eq!(texts(&keys, "fk_table_name"), ["shipments", "shipments__v1"]);

    let cross = CommandGetCrossReference {
        pk_db_schema: Some("customers".into()),
        pk_table: "profiles".into(),
        fk_db_schema: Some("sales".into()),
        fk_table: "orders".into(),
        ..Default::default()
    };
    let info = alice.get_cross_reference(cross).await.unwrap();
    assert_eq!(texts(&fetch(&mut alice, info).await, "fk_column_name"), ["customer_id"]);

    // No relationship: an empty answer, not an error.
    let none = CommandGetImportedKeys { table: "profiles".into(), ..Default::default() };
    let info = alice.get_imported_keys(none).await.unwrap();
    assert_eq!(common::rows(&fetch(&mut alice, info).await), 0);
    s.stop().await;
}

#[tokio::test]
async fn server_information_and_types() {
    let s = Secure::start().await;
    let mut alice = sql_client(&s, "alice").await;
    let info = alice
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
            SqlInfo::SqlIdentifierQuoteChar,
        ])
        .await
        .unwrap();
    let batches = fetch(&mut alice, info).await;
    assert_eq!(common::rows(&batches), 3);
    let values = batches[0].column(1).as_union();
    let name = values.value(0);
    assert_eq!(name.as_string::<i32>().value(0), "meshgate");
    assert!(values.value(1).as_boolean().value(0), "read-only");

    let all = alice.get_sql_info(vec![]).await.unwrap();
    assert!(common::rows(&fetch(&mut alice, all).await) > 60, "the complete key set");

    let info = alice.get_xdbc_type_info(CommandGetXdbcTypeInfo::default()).await.unwrap();
    let types = texts(&fetch(&mut alice, info).await, "type_name");
    for t in ["BIGINT", "VARCHAR", "DOUBLE", "DATE", "TIMESTAMP", "DECIMAL", "BOOLEAN"] {
        assert!(types.contains(&t.to_string()), "{t} in {types:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn system_tables_describe_only_visible_products() {
    let s = Secure::start().await;
    let read = |user: &'static str, sql: &'static str| {
        let s = &s;
        async move {
            let mut c = sql_client(s, user).await;
            let info = c.execute(sql.into(), None).await.unwrap();
            fetch(&mut c, info).await
        }
    };
    let products = read("alice", "SELECT domain, product, readable FROM _mesh.products ORDER BY domain, product").await;
    let names = texts(&products, "product");
    assert!(names.contains(&"orders".to_string()) && !names.contains(&"daily_revenue".to_string()), "{names:?}");
    let carol = texts(&read("carol", "SELECT product FROM _mesh.products").await, "product");
    assert!(carol.contains(&"daily_revenue".to_string()));
    let columns = read(
        "alice",
        "SELECT column_name, \"references\" FROM _mesh.columns WHERE product = 'shipments' AND \"references\" IS NOT NULL",
    )
    .await;
    assert_eq!(texts(&columns, "column_name"), ["order_id", "warehouse_id"]);
    let sla = read("alice", "SELECT contract_version, table_name FROM mesh._mesh.ports WHERE product = 'orders'").await;
    assert_eq!(texts(&sla, "table_name"), ["mesh.sales.\"orders__v1\""]);
    s.stop().await;
}

/// A request carrying `user`'s bearer token and, if given, a cookie.
fn as_user<T>(message: T, token: &str, cookie: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(c) = cookie {
        r.metadata_mut().insert("cookie", c.parse().unwrap());
    }
    r
}

#[tokio::test]
async fn prepared_statements_bind_rows_and_stay_with_their_caller() {
    use arrow::array::StringArray;
    use arrow_flight::sql::{CommandPreparedStatementQuery, ProstMessageExt};
    use prost::Message;
    use std::sync::Arc;

    let s = Secure::start().await;
    let mut carol = sql_client(&s, "carol").await;
    let mut prepared =
        carol.prepare("SELECT count(*) AS n FROM sales.orders WHERE region = ?".into(), None).await.unwrap();
    let parameters = prepared.parameter_schema().unwrap();
    assert_eq!(parameters.fields().len(), 1, "one parameter announced: {parameters:?}");
    let regions = StringArray::from(vec!["EMEA", "AMER"]);
    let batch = RecordBatch::try_from_iter([("region", Arc::new(regions) as _)]).unwrap();
    prepared.set_parameters(batch).unwrap();
    let info = prepared.execute().await.unwrap();
    assert_eq!(info.endpoint.len(), 2, "one execution per parameter row");
    let counts: Vec<i64> = fetch(&mut carol, info.clone())
        .await
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec())
        .collect();
    assert_eq!(counts.len(), 2);
    assert!(counts.iter().all(|n| *n > 0), "{counts:?}");

    // Another caller can neither redeem its tickets nor execute the bound handle.
    let bob = s.login("bob").await;
    let mut raw = carol.inner().clone();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let stolen = raw.do_get(as_user(ticket, &bob, None)).await.unwrap_err();
    assert_eq!(stolen.code(), tonic::Code::PermissionDenied, "{stolen}");
    let bound = info.flight_descriptor.clone().unwrap();
    let handle = arrow_flight::sql::Any::decode(bound.cmd.as_ref())
        .unwrap()
        .unpack::<CommandPreparedStatementQuery>()
        .unwrap()
        .unwrap();
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(handle.as_any().encode_to_vec());
    let refused = raw.get_flight_info(as_user(descriptor, &bob, None)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    s.stop().await;
}

#[tokio::test]
async fn a_session_cookie_belongs_to_its_caller() {
    use meshgate_proto::flight::session_option_value::OptionValue;
    use meshgate_proto::flight::{SessionOptionValue, SetSessionOptionsRequest, SetSessionOptionsResult};
    use prost::Message;

    let s = Secure::start().await;
    let alice = s.login("alice").await;
    let mut raw = sql_client(&s, "alice").await.inner().clone();
    let request = SetSessionOptionsRequest {
        session_options: [
            ("schema".to_string(), SessionOptionValue { option_value: Some(OptionValue::StringValue("sales".into())) }),
            ("colour".to_string(), SessionOptionValue { option_value: Some(OptionValue::StringValue("red".into())) }),
        ]
        .into(),
    };
    let action = arrow_flight::Action::new("SetSessionOptions", request.encode_to_vec());
    let response = raw.do_action(as_user(action, &alice, None)).await.unwrap();
    let cookie =
        response.metadata().get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_string();
    let result = response.into_inner().message().await.unwrap().unwrap();
    let errors = SetSessionOptionsResult::decode(result.body).unwrap().errors;
    assert_eq!(errors.keys().collect::<Vec<_>>(), ["colour"], "unknown names are refused by name");

    let statement = |sql: &str| {
        let cmd = arrow_flight::sql::CommandStatementQuery { query: sql.into(), transaction_id: None };
        arrow_flight::FlightDescriptor::new_cmd(arrow_flight::sql::ProstMessageExt::as_any(&cmd).encode_to_vec())
    };
    raw.get_flight_info(as_user(statement("SELECT * FROM orders"), &alice, Some(&cookie))).await.unwrap();
    let bob = s.login("bob").await;
    let replayed = raw.get_flight_info(as_user(statement("SELECT * FROM orders"), &bob, Some(&cookie))).await;
    let e = replayed.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("meshgate_session"), "{e}");
    let forged = format!("{}A", cookie);
    let e = raw.get_flight_info(as_user(statement("SELECT 1"), &alice, Some(&forged))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    s.stop().await;
}
