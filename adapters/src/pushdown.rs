//! What adapters of SQL-speaking sources share: which predicates may be sent to the source,
//! how they are printed, and batches conformed to the schema a table announced.
//!
//! A predicate is sent only when the source decides it exactly as DataFusion would, so the rows
//! that come back are the rows DataFusion would have kept: the adapter says per column how far
//! the source agrees ([`Agreement`]), and [`pushable`] allows comparisons of such columns with
//! literals, `IN`, `BETWEEN`, `IS [NOT] NULL` and `AND`/`OR`/`NOT` of those.

use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::Dialect;

/// How far a source agrees with DataFusion on comparisons of one column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// Equality and order.
    Ordered,
    /// Equality only (e.g. text, whose order depends on a collation).
    Equality,
    /// Only `IS [NOT] NULL`.
    Nulls,
}

/// Whether `e` may be sent to a source that agrees on columns as `agreement` says (`None`: not
/// a column of the source). Float literals never are (`-0`, `NaN`).
pub fn pushable(e: &Expr, agreement: &dyn Fn(&Column) -> Option<Agreement>) -> bool {
    let col = |e: &Expr| match e {
        Expr::Column(c) => agreement(c),
        _ => None,
    };
    let lit = |e: &Expr| matches!(e, Expr::Literal(v, _) if !matches!(v, ScalarValue::Float16(_) | ScalarValue::Float32(_) | ScalarValue::Float64(_)));
    let compared = |l: &Expr, r: &Expr| col(l).filter(|_| lit(r)).or_else(|| col(r).filter(|_| lit(l)));
    match e {
        Expr::BinaryExpr(b) => match b.op {
            Operator::And | Operator::Or => pushable(&b.left, agreement) && pushable(&b.right, agreement),
            Operator::Eq | Operator::NotEq => {
                matches!(compared(&b.left, &b.right), Some(Agreement::Ordered | Agreement::Equality))
            }
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                compared(&b.left, &b.right) == Some(Agreement::Ordered)
            }
            _ => false,
        },
        Expr::Not(inner) => pushable(inner, agreement),
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => col(inner).is_some(),
        Expr::InList(l) => {
            matches!(col(&l.expr), Some(Agreement::Ordered | Agreement::Equality)) && l.list.iter().all(lit)
        }
        Expr::Between(b) => col(&b.expr) == Some(Agreement::Ordered) && lit(&b.low) && lit(&b.high),
        _ => false,
    }
}

/// The answer to DataFusion's `supports_filters_pushdown`: `Exact` for what `pushable` allows
/// (the source returns exactly the rows DataFusion would keep), `Unsupported` for the rest.
pub fn exact_where(filters: &[&Expr], pushable: impl Fn(&Expr) -> bool) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(
            |f| if pushable(f) { TableProviderFilterPushDown::Exact } else { TableProviderFilterPushDown::Unsupported },
        )
        .collect()
}

/// `e` printed in `dialect`, its columns unqualified (they name the source's columns).
pub fn to_sql(e: &Expr, dialect: &dyn Dialect) -> DfResult<String> {
    let e = e
        .clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                }
                other => Transformed::no(other),
            })
        })?
        .data;
    Ok(Unparser::new(dialect).expr_to_sql(&e)?.to_string())
}

/// `batch` labelled with the announced schema (names and nullability), each column cast when the
/// source's type differs; with no announced columns (a count), only the row count is kept.
pub fn conform(batch: RecordBatch, schema: &SchemaRef) -> DfResult<RecordBatch> {
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    let columns =
        schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| {
                if c.data_type() == f.data_type() { Ok(Arc::clone(c)) } else { arrow::compute::cast(c, f.data_type()) }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)?)
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn conform_relabels_and_counts() {
        use arrow::array::{ArrayRef, Int32Array, Int64Array};
        let announced = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let got = RecordBatch::try_from_iter([("a", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef)]).unwrap();
        let out = conform(got.clone(), &announced).unwrap();
        assert_eq!(out.schema(), announced);
        assert_eq!(out.column(0).as_ref(), &Int64Array::from(vec![1, 2]) as &dyn arrow::array::Array);
        let count = conform(got, &Arc::new(Schema::empty())).unwrap();
        assert_eq!((count.num_columns(), count.num_rows()), (0, 2));
    }
}
