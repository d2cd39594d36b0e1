//! Column masks: typed strategies selected by the policy decision, built as DataFusion
//! expressions. Masked columns keep their Arrow type wherever the strategy allows.

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions::expr_fn::{concat, date_trunc, encode, right, sha256};
use datafusion::logical_expr::{Expr, cast, col, lit};
use serde::{Deserialize, Serialize};

/// How a classification is masked for callers without `read_unmasked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskStrategy {
    /// A null of the column's type.
    Null,
    /// Text becomes `***`; other types become null.
    Redact,
    /// Hex SHA-256 of the secret salt and the value (text).
    Hash,
    /// Text keeps its last four characters behind `****`; other types become null.
    Last4,
    /// Dates and timestamps keep only their year (January 1st); other types become null.
    YearOnly,
    /// The column is not served at all.
    DenyColumn,
}

impl MaskStrategy {
    /// The strategy's name, as governance files write it (`last4`, `deny_column`, ...).
    pub fn name(self) -> &'static str {
        match self {
            MaskStrategy::Null => "null",
            MaskStrategy::Redact => "redact",
            MaskStrategy::Hash => "hash",
            MaskStrategy::Last4 => "last4",
            MaskStrategy::YearOnly => "year_only",
            MaskStrategy::DenyColumn => "deny_column",
        }
    }

    /// The expression replacing column `name` of type `dt`; `None` for [`MaskStrategy::DenyColumn`].
    pub fn expr(self, name: &str, dt: &DataType, salt: &str) -> Option<Expr> {
        let column = col(datafusion::common::Column::new_unqualified(name));
        let null = || Expr::Literal(ScalarValue::try_from(dt).unwrap_or(ScalarValue::Null), None);
        let text = matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        Some(match self {
            MaskStrategy::DenyColumn => return None,
            MaskStrategy::Null => null(),
            MaskStrategy::Redact if text => cast(lit("***"), dt.clone()),
            MaskStrategy::Last4 if text => cast(concat(vec![lit("****"), right(column, lit(4i64))]), dt.clone()),
            MaskStrategy::Hash => {
                let value = cast(column, DataType::Utf8);
                let hashed = encode(sha256(concat(vec![lit(salt.to_string()), value])), lit("hex"));
                if text { cast(hashed, dt.clone()) } else { hashed }
            }
            MaskStrategy::YearOnly => match dt {
                DataType::Date32 | DataType::Date64 => cast(
                    date_trunc(
                        lit("year"),
                        cast(column, DataType::Timestamp(arrow::datatypes::TimeUnit::Second, None)),
                    ),
                    dt.clone(),
                ),
                DataType::Timestamp(..) => cast(date_trunc(lit("year"), column), dt.clone()),
                _ => null(),
            },
            MaskStrategy::Redact | MaskStrategy::Last4 => null(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_governance_file_spelling() {
        for s in [
            MaskStrategy::Null,
            MaskStrategy::Redact,
            MaskStrategy::Hash,
            MaskStrategy::Last4,
            MaskStrategy::YearOnly,
            MaskStrategy::DenyColumn,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.name()));
        }
    }
}
