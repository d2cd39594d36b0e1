//! How served columns are described to SQL clients: a SQL type name, its XDBC (JDBC/ODBC) type
//! code, precision and scale, and the `ARROW:FLIGHT:SQL:*` column metadata keys that carry them
//! with the contract's description.
//!
//! One table, used for the metadata on every served field and for the type list Flight SQL
//! clients ask for (`GetXdbcTypeInfo`), so the two never disagree.

use std::collections::HashMap;

use arrow::datatypes::{DataType, IntervalUnit, TimeUnit};
use arrow_flight::sql::XdbcDataType;

/// A SQL type as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlType {
    /// SQL name (`BIGINT`, `VARCHAR`, `TIMESTAMP`, ...).
    pub name: &'static str,
    /// XDBC type code.
    pub xdbc: XdbcDataType,
    /// Precision in digits for numbers, characters for times; `None` where unbounded.
    pub precision: Option<i32>,
    /// Digits after the decimal point (decimals, fractional seconds).
    pub scale: Option<i32>,
}

impl SqlType {
    const fn new(name: &'static str, xdbc: XdbcDataType, precision: Option<i32>, scale: Option<i32>) -> Self {
        Self { name, xdbc, precision, scale }
    }
}

/// The SQL type an Arrow type is served as (dictionaries as their values).
pub fn sql_type(dt: &DataType) -> SqlType {
    use DataType::*;
    use XdbcDataType as X;
    let fraction = |u: &TimeUnit| match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    };
    match dt {
        Dictionary(_, v) => sql_type(v),
        Boolean => SqlType::new("BOOLEAN", X::XdbcBit, Some(1), None),
        Int8 | UInt8 => SqlType::new("TINYINT", X::XdbcTinyint, Some(3), Some(0)),
        Int16 | UInt16 => SqlType::new("SMALLINT", X::XdbcSmallint, Some(5), Some(0)),
        Int32 | UInt32 => SqlType::new("INTEGER", X::XdbcInteger, Some(10), Some(0)),
        Int64 | UInt64 => SqlType::new("BIGINT", X::XdbcBigint, Some(19), Some(0)),
        Float16 | Float32 => SqlType::new("REAL", X::XdbcReal, Some(7), None),
        Float64 => SqlType::new("DOUBLE", X::XdbcDouble, Some(15), None),
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => {
            SqlType::new("DECIMAL", X::XdbcDecimal, Some(*p as i32), Some(*s as i32))
        }
        Utf8 | LargeUtf8 | Utf8View => SqlType::new("VARCHAR", X::XdbcVarchar, None, None),
        Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
            SqlType::new("VARBINARY", X::XdbcVarbinary, None, None)
        }
        Date32 | Date64 => SqlType::new("DATE", X::XdbcDate, Some(10), None),
        Time32(u) | Time64(u) => SqlType::new("TIME", X::XdbcTime, Some(8), Some(fraction(u))),
        Timestamp(u, None) => SqlType::new("TIMESTAMP", X::XdbcTimestamp, Some(29), Some(fraction(u))),
        Timestamp(u, Some(_)) => {
            SqlType::new("TIMESTAMP WITH TIME ZONE", X::XdbcTimestamp, Some(35), Some(fraction(u)))
        }
        Interval(IntervalUnit::YearMonth) => SqlType::new("INTERVAL YEAR TO MONTH", X::XdbcInterval, None, None),
        Interval(_) | Duration(_) => SqlType::new("INTERVAL DAY TO SECOND", X::XdbcInterval, None, None),
        List(_) | LargeList(_) | FixedSizeList(..) | ListView(_) | LargeListView(_) => {
            SqlType::new("ARRAY", X::XdbcUnknownType, None, None)
        }
        Struct(_) => SqlType::new("STRUCT", X::XdbcUnknownType, None, None),
        Map(..) => SqlType::new("MAP", X::XdbcUnknownType, None, None),
        _ => SqlType::new("OTHER", X::XdbcUnknownType, None, None),
    }
}

/// Prefix of the Flight SQL column metadata keys.
pub const FLIGHT_SQL_KEY: &str = "ARROW:FLIGHT:SQL:";

/// The `ARROW:FLIGHT:SQL:*` metadata of a served column of type `dt`, described by
/// `description`: type name, precision, scale, read-only, searchable, case sensitivity, auto
/// increment and remarks.
pub fn column_metadata(dt: &DataType, description: Option<&str>) -> HashMap<String, String> {
    let t = sql_type(dt);
    let text = matches!(t.xdbc, XdbcDataType::XdbcVarchar);
    let mut md: HashMap<String, String> = [
        ("TYPE_NAME", t.name.to_string()),
        ("IS_READ_ONLY", "1".into()),
        ("IS_SEARCHABLE", "1".into()),
        ("IS_AUTO_INCREMENT", "0".into()),
        ("IS_CASE_SENSITIVE", if text { "1" } else { "0" }.into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{FLIGHT_SQL_KEY}{k}"), v))
    .collect();
    if let Some(p) = t.precision {
        md.insert(format!("{FLIGHT_SQL_KEY}PRECISION"), p.to_string());
    }
    if let Some(s) = t.scale {
        md.insert(format!("{FLIGHT_SQL_KEY}SCALE"), s.to_string());
    }
    if let Some(d) = description.filter(|d| !d.trim().is_empty()) {
        md.insert(format!("{FLIGHT_SQL_KEY}REMARKS"), d.trim().to_string());
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_metadata() {
        assert_eq!(sql_type(&DataType::Int64).name, "BIGINT");
        assert_eq!(sql_type(&DataType::Utf8View), sql_type(&DataType::Utf8));
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        assert_eq!(sql_type(&dict).name, "VARCHAR");
        let d = sql_type(&DataType::Decimal128(12, 2));
        assert_eq!((d.precision, d.scale), (Some(12), Some(2)));
        let md = column_metadata(&DataType::Decimal128(12, 2), Some(" Order total. "));
        assert_eq!(md["ARROW:FLIGHT:SQL:TYPE_NAME"], "DECIMAL");
        assert_eq!(md["ARROW:FLIGHT:SQL:PRECISION"], "12");
        assert_eq!(md["ARROW:FLIGHT:SQL:SCALE"], "2");
        assert_eq!(md["ARROW:FLIGHT:SQL:REMARKS"], "Order total.");
        assert!(!column_metadata(&DataType::Utf8, None).contains_key("ARROW:FLIGHT:SQL:REMARKS"));
    }
}
