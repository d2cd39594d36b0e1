//! Flight SQL metadata commands: server information, catalogs, schemas, tables, table types,
//! types and keys, answered from what the caller sees of the catalog `mesh`.
//!
//! A metadata command's `FlightInfo` carries the command itself as its ticket: the answer is
//! computed at `DoGet` for whoever redeems it, from that caller's own view, so a ticket shown
//! to someone else tells them nothing they could not ask for. Result schemas are the Flight
//! SQL reference schemas (arrow-flight's builders, and the key schemas below).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    GetCatalogsBuilder, GetDbSchemasBuilder, GetTablesBuilder, SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo,
    XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Command, Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlOuterJoinsSupportLevel, SqlSupportedCaseSensitivity,
    SqlSupportedGroupBy, SqlSupportedSubqueries, SqlSupportedTransaction, SqlSupportedUnions,
    SqlTransactionIsolationLevel, SupportedSqlGrammar, XdbcDataType,
};

use crate::access::{AccessCore, CATALOG, Error, Result, TableEntry, TableKind};
use crate::auth::Principal;
use crate::catalog::sqltype::sql_type;

/// The result schema of a metadata command; `None` for commands that are not metadata.
pub(crate) fn schema(command: &Command) -> Option<SchemaRef> {
    Some(match command {
        Command::CommandGetSqlInfo(_) => Arc::new(SqlInfoDataBuilder::schema().clone()),
        Command::CommandGetXdbcTypeInfo(_) => XDBC_TYPES.schema(),
        Command::CommandGetCatalogs(_) => GetCatalogsBuilder::new().schema(),
        Command::CommandGetDbSchemas(_) => GetDbSchemasBuilder::new(None::<String>, None::<String>).schema(),
        Command::CommandGetTables(c) => GetTablesBuilder::new(
            None::<String>,
            None::<String>,
            None::<String>,
            Vec::<String>::new(),
            c.include_schema,
        )
        .schema(),
        Command::CommandGetTableTypes(_) => table_types_schema(),
        Command::CommandGetPrimaryKeys(_) => primary_keys_schema(),
        Command::CommandGetImportedKeys(_)
        | Command::CommandGetExportedKeys(_)
        | Command::CommandGetCrossReference(_) => foreign_keys_schema(),
        _ => return None,
    })
}

/// Answers metadata command `command` for `p`.
pub(crate) fn answer(core: &AccessCore, p: &Principal, command: Command) -> Result<RecordBatch> {
    match command {
        Command::CommandGetSqlInfo(c) => sql_info(core).record_batch(c.info).map_err(arrow),
        Command::CommandGetXdbcTypeInfo(c) => XDBC_TYPES.record_batch(c.data_type).map_err(arrow),
        Command::CommandGetCatalogs(_) => {
            let mut b = GetCatalogsBuilder::new();
            b.append(CATALOG);
            b.build().map_err(arrow)
        }
        Command::CommandGetDbSchemas(c) => {
            let mut b = c.into_builder();
            for s in core.schemas(p) {
                b.append(CATALOG, s);
            }
            b.build().map_err(arrow)
        }
        Command::CommandGetTables(c) => {
            let mut b = c.into_builder();
            for t in core.tables(p) {
                b.append(CATALOG, &t.schema_name, &t.name, t.kind.name(), &t.schema).map_err(arrow)?;
            }
            b.build().map_err(arrow)
        }
        Command::CommandGetTableTypes(_) => {
            let names: Vec<&str> = TableKind::ALL.iter().map(|k| k.name()).collect();
            RecordBatch::try_new(table_types_schema(), vec![Arc::new(StringArray::from(names))]).map_err(arrow)
        }
        Command::CommandGetPrimaryKeys(c) => {
            let tables = core.tables(p);
            let rows: Vec<(&TableEntry, usize, &String)> = tables
                .iter()
                .filter(|t| in_scope(c.catalog.as_deref(), c.db_schema.as_deref(), &c.table, t))
                .flat_map(|t| t.primary_key.iter().enumerate().map(move |(i, col)| (t, i, col)))
                .collect();
            let text = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
            let columns: Vec<ArrayRef> = vec![
                text(rows.iter().map(|_| Some(CATALOG.to_string())).collect()),
                text(rows.iter().map(|r| Some(r.0.schema_name.clone())).collect()),
                text(rows.iter().map(|r| Some(r.0.name.clone())).collect()),
                text(rows.iter().map(|r| Some(r.2.clone())).collect()),
                text(rows.iter().map(|r| Some(format!("{}_pkey", r.0.name))).collect()),
                Arc::new(Int32Array::from(rows.iter().map(|r| r.1 as i32 + 1).collect::<Vec<_>>())),
            ];
            RecordBatch::try_new(primary_keys_schema(), columns).map_err(arrow)
        }
        Command::CommandGetImportedKeys(c) => {
            let fk = |t: &TableEntry| in_scope(c.catalog.as_deref(), c.db_schema.as_deref(), &c.table, t);
            foreign_keys(&core.tables(p), fk, |_, _| true).map_err(arrow)
        }
        Command::CommandGetExportedKeys(c) => {
            let pk = |schema: &str, table: &str| {
                c.catalog.as_deref().is_none_or(|x| x == CATALOG)
                    && c.db_schema.as_deref().is_none_or(|x| x == schema)
                    && c.table == table
            };
            foreign_keys(&core.tables(p), |_| true, pk).map_err(arrow)
        }
        Command::CommandGetCrossReference(c) => {
            let fk = |t: &TableEntry| in_scope(c.fk_catalog.as_deref(), c.fk_db_schema.as_deref(), &c.fk_table, t);
            let pk = |schema: &str, table: &str| {
                c.pk_catalog.as_deref().is_none_or(|x| x == CATALOG)
                    && c.pk_db_schema.as_deref().is_none_or(|x| x == schema)
                    && c.pk_table == table
            };
            foreign_keys(&core.tables(p), fk, pk).map_err(arrow)
        }
        other => Err(Error::Internal(format!("{} is not a metadata command", other.type_url()))),
    }
}

/// A failure to build an answer (a bug: the builders' inputs are the server's own).
fn arrow(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("building a metadata answer failed: {e}"))
}

/// Whether `t` is the table a key command names (catalog and schema optional, table exact).
fn in_scope(catalog: Option<&str>, schema: Option<&str>, table: &str, t: &TableEntry) -> bool {
    catalog.is_none_or(|c| c == CATALOG) && schema.is_none_or(|s| s == t.schema_name) && t.name == table
}

/// Foreign keys of the tables `fk` keeps that reference a table `pk` keeps.
fn foreign_keys(
    tables: &[TableEntry],
    fk: impl Fn(&TableEntry) -> bool,
    pk: impl Fn(&str, &str) -> bool,
) -> arrow::error::Result<RecordBatch> {
    let rows: Vec<(&TableEntry, &crate::access::ForeignKey)> = tables
        .iter()
        .filter(|t| fk(t))
        .flat_map(|t| t.foreign_keys.iter().map(move |k| (t, k)))
        .filter(|(_, k)| pk(&k.pk_schema, &k.pk_table))
        .collect();
    let text = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let catalog = || text(rows.iter().map(|_| Some(CATALOG.to_string())).collect());
    // Every relationship is one column: each key has one part.
    let columns: Vec<ArrayRef> = vec![
        catalog(),
        text(rows.iter().map(|r| Some(r.1.pk_schema.clone())).collect()),
        text(rows.iter().map(|r| Some(r.1.pk_table.clone())).collect()),
        text(rows.iter().map(|r| Some(r.1.pk_column.clone())).collect()),
        catalog(),
        text(rows.iter().map(|r| Some(r.0.schema_name.clone())).collect()),
        text(rows.iter().map(|r| Some(r.0.name.clone())).collect()),
        text(rows.iter().map(|r| Some(r.1.column.clone())).collect()),
        Arc::new(Int32Array::from(vec![1; rows.len()])),
        text(rows.iter().map(|r| Some(format!("{}_{}_fkey", r.0.name, r.1.column))).collect()),
        text(rows.iter().map(|r| Some(format!("{}_pkey", r.1.pk_table))).collect()),
        // NO_ACTION: the mesh is read-only.
        Arc::new(UInt8Array::from(vec![3; rows.len()])),
        Arc::new(UInt8Array::from(vec![3; rows.len()])),
    ];
    RecordBatch::try_new(foreign_keys_schema(), columns)
}

fn table_types_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("table_type", DataType::Utf8, false)]))
}

/// `CommandGetPrimaryKeys`' reference schema.
fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// The reference schema of `CommandGetImportedKeys`, `CommandGetExportedKeys` and
/// `CommandGetCrossReference`.
fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// What the server tells SQL clients about itself and its SQL dialect.
fn sql_info(core: &AccessCore) -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "meshgate");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, arrow::ARROW_VERSION);
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    // Unquoted names are folded to lower case; quoted ones are kept as written.
    b.append(SqlInfo::SqlIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlQuotedIdentifierCase, SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32);
    // Some listed products may be discoverable but not readable.
    b.append(SqlInfo::SqlAllTablesAreSelectable, false);
    // Ascending sorts put NULLs last, descending ones first: NULLs sort high.
    b.append(SqlInfo::SqlNullOrdering, SqlNullOrdering::SqlNullsSortedHigh as i32);
    let keywords: Vec<String> =
        datafusion::sql::sqlparser::keywords::ALL_KEYWORDS.iter().map(|k| k.to_string()).collect();
    b.append(SqlInfo::SqlKeywords, keywords);
    let functions = core.sql_functions();
    for (info, sections) in [
        (SqlInfo::SqlNumericFunctions, &["Math Functions"][..]),
        (
            SqlInfo::SqlStringFunctions,
            &["String Functions", "Regular Expression Functions", "Binary String Functions"][..],
        ),
        (SqlInfo::SqlDatetimeFunctions, &["Time and Date Functions"][..]),
        (SqlInfo::SqlSystemFunctions, &["Other Functions", "Conditional Functions", "Hashing Functions"][..]),
    ] {
        let names: Vec<String> =
            functions.iter().filter(|(_, s)| sections.contains(&s.as_str())).map(|(n, _)| n.clone()).collect();
        b.append(info, names);
    }
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsConvert, BTreeMap::<i32, Vec<i32>>::new());
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(
        SqlInfo::SqlSupportedGroupBy,
        bits(&[SqlSupportedGroupBy::SqlGroupByUnrelated as i32, SqlSupportedGroupBy::SqlGroupByBeyondSelect as i32]),
    );
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(
        SqlInfo::SqlSupportedGrammar,
        bits(&[SupportedSqlGrammar::SqlMinimumGrammar as i32, SupportedSqlGrammar::SqlCoreGrammar as i32]),
    );
    b.append(
        SqlInfo::SqlAnsi92SupportedLevel,
        // ANSI-92 entry and intermediate levels (arrow-flight does not export that enum).
        bits(&[0, 1]),
    );
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(SqlInfo::SqlOuterJoinsSupportLevel, SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32);
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    // Schemas and catalogs appear in no procedure call, index or privilege definition.
    b.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    b.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    b.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(
        SqlInfo::SqlSupportedSubqueries,
        bits(&[
            SqlSupportedSubqueries::SqlSubqueriesInComparisons as i32,
            SqlSupportedSubqueries::SqlSubqueriesInExists as i32,
            SqlSupportedSubqueries::SqlSubqueriesInIns as i32,
        ]),
    );
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(
        SqlInfo::SqlSupportedUnions,
        bits(&[SqlSupportedUnions::SqlUnion as i32, SqlSupportedUnions::SqlUnionAll as i32]),
    );
    // No fixed limits beyond the request size the server accepts.
    for info in [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnNameLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxColumnsInTable,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxRowSize,
        SqlInfo::SqlMaxStatementLength,
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxTablesInSelect,
        SqlInfo::SqlMaxUsernameLength,
    ] {
        b.append(info, 0i64);
    }
    // Names are at most 128 characters.
    for info in [SqlInfo::SqlDbSchemaNameLength, SqlInfo::SqlMaxCatalogNameLength, SqlInfo::SqlMaxTableNameLength] {
        b.append(info, 128i64);
    }
    b.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, false);
    b.append(SqlInfo::SqlDefaultTransactionIsolation, SqlTransactionIsolationLevel::SqlTransactionNone as i64);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlSupportedTransactionsIsolationLevels, 0i32);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, true);
    b.append(SqlInfo::SqlSupportedResultSetTypes, 0i32);
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("every SqlInfo value has a valid type")
}

/// A bitmask with bits `set`.
fn bits(set: &[i32]) -> i32 {
    set.iter().fold(0, |acc, b| acc | (1 << b))
}

/// Every type the server can return, as XDBC type information.
static XDBC_TYPES: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    use DataType::*;
    let served = [
        Boolean,
        Int8,
        Int16,
        Int32,
        Int64,
        Float32,
        Float64,
        Decimal128(38, 10),
        Utf8,
        Binary,
        Date32,
        Time64(arrow::datatypes::TimeUnit::Microsecond),
        Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
        Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
    ];
    let mut b = XdbcTypeInfoDataBuilder::new();
    for dt in served {
        let t = sql_type(&dt);
        let numeric = dt.is_numeric();
        let quoted = matches!(t.xdbc, XdbcDataType::XdbcVarchar | XdbcDataType::XdbcVarbinary)
            || dt.is_temporal()
            || matches!(dt, Interval(_));
        let (prefix, suffix) = match t.xdbc {
            XdbcDataType::XdbcVarbinary => (Some("X'".to_string()), Some("'".to_string())),
            XdbcDataType::XdbcDate => (Some("DATE '".to_string()), Some("'".to_string())),
            XdbcDataType::XdbcTime => (Some("TIME '".to_string()), Some("'".to_string())),
            XdbcDataType::XdbcTimestamp => (Some("TIMESTAMP '".to_string()), Some("'".to_string())),
            XdbcDataType::XdbcInterval => (Some("INTERVAL '".to_string()), Some("'".to_string())),
            _ if quoted => (Some("'".to_string()), Some("'".to_string())),
            _ => (None, None),
        };
        b.append(XdbcTypeInfo {
            type_name: t.name.to_string(),
            data_type: t.xdbc,
            column_size: t.precision.or(if quoted && !dt.is_temporal() { Some(i32::MAX) } else { None }),
            literal_prefix: prefix,
            literal_suffix: suffix,
            create_params: matches!(t.xdbc, XdbcDataType::XdbcDecimal)
                .then(|| vec!["precision".to_string(), "scale".to_string()]),
            nullable: Nullable::NullabilityNullable,
            case_sensitive: matches!(t.xdbc, XdbcDataType::XdbcVarchar),
            searchable: Searchable::Full,
            unsigned_attribute: numeric.then_some(false),
            fixed_prec_scale: matches!(t.xdbc, XdbcDataType::XdbcDecimal),
            auto_increment: numeric.then_some(false),
            local_type_name: Some(t.name.to_string()),
            minimum_scale: matches!(t.xdbc, XdbcDataType::XdbcDecimal).then_some(0),
            maximum_scale: matches!(t.xdbc, XdbcDataType::XdbcDecimal).then_some(38),
            sql_data_type: t.xdbc,
            datetime_subcode: None,
            num_prec_radix: numeric.then_some(10),
            interval_precision: None,
        });
    }
    b.build().expect("the served types are valid XDBC type information")
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmasks() {
        assert_eq!(bits(&[0, 1]), 3);
        assert_eq!(bits(&[]), 0);
    }

    #[test]
    fn every_metadata_command_has_its_reference_schema() {
        use arrow_flight::sql::*;
        let tables = GetTablesBuilder::new(None::<String>, None::<String>, None::<String>, Vec::<String>::new(), true);
        for (command, names) in [
            (Command::CommandGetCatalogs(CommandGetCatalogs {}), vec!["catalog_name"]),
            (Command::CommandGetDbSchemas(CommandGetDbSchemas::default()), vec!["catalog_name", "db_schema_name"]),
            (
                Command::CommandGetTables(CommandGetTables { include_schema: true, ..Default::default() }),
                tables.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
            ),
            (Command::CommandGetTableTypes(CommandGetTableTypes {}), vec!["table_type"]),
            (
                Command::CommandGetPrimaryKeys(CommandGetPrimaryKeys::default()),
                vec!["catalog_name", "db_schema_name", "table_name", "column_name", "key_name", "key_sequence"],
            ),
        ] {
            let s = schema(&command).expect("a metadata command");
            let got: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(got, names);
        }
        assert_eq!(schema(&Command::CommandGetExportedKeys(Default::default())).unwrap().fields().len(), 13);
        let query = Command::CommandStatementQuery(CommandStatementQuery::default());
        assert!(schema(&query).is_none());
    }
}
