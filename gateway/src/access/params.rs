//! Parameters of SQL statements: `$1`/`?` placeholders, the values bound to them, and how those
//! values travel in signed handles and tickets.
//!
//! A client binds a batch of parameter rows to a prepared statement (Flight SQL `DoPut`); each
//! row is one execution. Values travel as an Arrow IPC stream inside the signed claims, so the
//! replica that executes needs nothing but the ticket. Values are only ever substituted for
//! placeholders in the planned statement: they are literals, never SQL text.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions, visit_expressions_mut};
use std::ops::ControlFlow;

use super::error::{Error, Result};

/// Most parameter rows one bound handle carries (each is one execution and one endpoint).
pub(super) const MAX_ROWS: usize = 1000;
/// Most bytes of parameter values one bound handle carries.
pub const MAX_BYTES: usize = 1 << 20;

/// The parameter rows a handle or ticket carries (`bytes` is an Arrow IPC stream; empty: none).
pub(crate) fn decode_rows(bytes: &[u8]) -> Result<Vec<Vec<ScalarValue>>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |e: &dyn std::fmt::Display| Error::Internal(format!("signed parameters do not decode: {e}"));
    let reader = StreamReader::try_new(bytes, None).map_err(|e| bad(&e))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        for i in 0..batch.num_rows() {
            let row = batch.columns().iter().map(|c| ScalarValue::try_from_array(c, i)).collect::<Result<Vec<_>, _>>();
            rows.push(row.map_err(|e| bad(&e))?);
        }
    }
    Ok(rows)
}

/// One row of values as the IPC stream claims carry (empty when there are none).
pub(crate) fn encode_row(row: &[ScalarValue]) -> Result<Vec<u8>> {
    if row.is_empty() {
        return Ok(Vec::new());
    }
    let columns: Vec<ArrayRef> =
        row.iter().map(|v| v.to_array_of_size(1)).collect::<Result<_, _>>().map_err(|e| internal(&e))?;
    let fields: Vec<Field> =
        row.iter().enumerate().map(|(i, v)| Field::new(format!("${}", i + 1), v.data_type(), true)).collect();
    encode(&[RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| internal(&e))?])
}

/// Parameter batches (from `DoPut`) as the IPC stream a bound handle carries; refuses more
/// than [`MAX_ROWS`] rows or [`MAX_BYTES`] bytes, and rows of different shapes.
pub(crate) fn encode_batches(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows > MAX_ROWS {
        return Err(Error::Parameters(format!(
            "{rows} parameter rows were bound; at most {MAX_ROWS} executions are bound at once, so bind them in several batches"
        )));
    }
    if let Some(first) = batches.first()
        && batches.iter().any(|b| b.schema().fields() != first.schema().fields())
    {
        return Err(Error::Parameters("every parameter batch bound at once must have the same schema".into()));
    }
    let bytes = encode(batches)?;
    if bytes.len() > MAX_BYTES {
        return Err(Error::Parameters(format!(
            "the bound parameter values take {} bytes; at most {MAX_BYTES} are bound at once",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let Some(first) = batches.first() else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &first.schema()).map_err(|e| internal(&e))?;
    for b in batches {
        w.write(b).map_err(|e| internal(&e))?;
    }
    w.finish().map_err(|e| internal(&e))?;
    drop(w);
    Ok(out)
}

fn internal(e: &dyn std::fmt::Display) -> Error {
    Error::Internal(format!("encoding parameters failed: {e}"))
}

/// Numbers `?` placeholders `$1`, `$2`, ... in the order they appear in the text, so both
/// styles plan alike. A statement mixing `?` with `$n` is refused.
pub(crate) fn number_question_marks(statement: &mut DfStatement) -> Result<()> {
    let DfStatement::Statement(s) = statement else { return Ok(()) };
    let mut marks = Vec::new();
    let mut numbered = false;
    let _ = visit_expressions(s.as_ref(), |e| {
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &v.value
        {
            if p == "?" {
                marks.push(v.span.start);
            } else {
                numbered = true;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    if marks.is_empty() {
        return Ok(());
    }
    if numbered {
        return Err(Error::Parameters("the statement mixes `?` and `$n` placeholders; use one style".into()));
    }
    let mut order = marks.clone();
    order.sort();
    let _ = visit_expressions_mut(s.as_mut(), |e| {
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &mut v.value
            && p == "?"
        {
            let n = order.iter().position(|l| *l == v.span.start).unwrap_or_default() + 1;
            *p = format!("${n}");
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

/// The positional parameters of a plan, `$1` first, each with the type planning inferred
/// (`Null` when it could not).
pub(crate) fn parameter_schema(plan: &LogicalPlan) -> Result<SchemaRef> {
    let types = parameter_types(plan)?;
    let fields: Vec<Field> =
        types.into_iter().map(|(n, t)| Field::new(format!("${n}"), t.unwrap_or(DataType::Null), true)).collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// The plan's placeholders by position, sorted; named ones (`$name`) are refused.
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<(usize, Option<DataType>)>> {
    let types: HashMap<String, Option<DataType>> =
        plan.get_parameter_types().map_err(|e| Error::Parameters(format!("the parameters' types conflict: {e}")))?;
    let mut out = Vec::with_capacity(types.len());
    for (name, t) in types {
        match name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n > 0 => out.push((n, t)),
            _ => {
                return Err(Error::Parameters(format!(
                    "placeholder `{}` is not positional; use `$1`, `$2`, ... or `?`",
                    crate::text::clip(&name)
                )));
            }
        }
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// The plan with `values` substituted for its placeholders, each cast to the type planning
/// inferred for it. The number of values must match the highest placeholder.
pub(crate) fn bind(plan: LogicalPlan, values: &[ScalarValue]) -> Result<LogicalPlan> {
    let types = parameter_types(&plan)?;
    let wanted = types.last().map(|(n, _)| *n).unwrap_or(0);
    if values.len() != wanted {
        return Err(Error::Parameters(match (wanted, values.len()) {
            (0, got) => format!("the statement has no parameters, but {got} values were bound"),
            (w, 0) => format!(
                "the statement has {w} parameter(s) ($1 .. ${w}); bind values to it (a prepared statement with parameters)"
            ),
            (w, got) => format!("the statement has {w} parameter(s) ($1 .. ${w}), but {got} values were bound"),
        }));
    }
    if wanted == 0 {
        return Ok(plan);
    }
    let mut cast = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let target = types.iter().find(|(n, _)| *n == i + 1).and_then(|(_, t)| t.clone());
        cast.push(match target {
            Some(t) if t != v.data_type() && !v.is_null() => v.cast_to(&t).map_err(|_| {
                Error::Parameters(format!("parameter ${} is a {}, which cannot be used as a {t}", i + 1, v.data_type()))
            })?,
            Some(t) if v.is_null() => ScalarValue::try_from(&t).unwrap_or(ScalarValue::Null),
            _ => v.clone(),
        });
    }
    plan.with_param_values(cast).map_err(|e| Error::Parameters(format!("the parameters cannot be bound: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    fn statement(sql: &str) -> DfStatement {
        let ctx = SessionContext::new();
        ctx.state().sql_to_statement(sql, &datafusion::config::Dialect::Generic).unwrap()
    }

    #[test]
    fn question_marks_are_numbered_in_text_order() {
        let mut s = statement("SELECT ? AS a FROM t WHERE x = ? AND y IN (SELECT z FROM u WHERE w > ?)");
        number_question_marks(&mut s).unwrap();
        assert_eq!(s.to_string(), "SELECT $1 AS a FROM t WHERE x = $2 AND y IN (SELECT z FROM u WHERE w > $3)");
        let mut mixed = statement("SELECT ? , $1");
        assert!(matches!(number_question_marks(&mut mixed), Err(Error::Parameters(_))));
        let mut none = statement("SELECT '?' AS q");
        number_question_marks(&mut none).unwrap();
        assert_eq!(none.to_string(), "SELECT '?' AS q");
    }

    #[test]
    fn rows_round_trip_through_ipc() {
        let row = vec![ScalarValue::Int64(Some(7)), ScalarValue::Utf8(Some("EMEA".into())), ScalarValue::Float64(None)];
        let bytes = encode_row(&row).unwrap();
        assert_eq!(decode_rows(&bytes).unwrap(), vec![row]);
        assert!(decode_rows(&[]).unwrap().is_empty());
        assert!(encode_row(&[]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn binding_counts_and_casts() {
        let ctx = SessionContext::new();
        let plan = ctx.state().create_logical_plan("SELECT CAST(1 AS INT) + $1 AS n WHERE $2 = 'x'").await.unwrap();
        let schema = parameter_schema(&plan).unwrap();
        assert_eq!(schema.field(0).name(), "$1");
        let too_few = bind(plan.clone(), &[ScalarValue::Int64(Some(1))]);
        assert!(matches!(too_few, Err(Error::Parameters(m)) if m.contains("2 parameter")));
        let bound = bind(plan, &[ScalarValue::Int64(Some(1)), ScalarValue::Utf8(Some("x".into()))]).unwrap();
        let out = ctx.execute_logical_plan(bound).await.unwrap().collect().await.unwrap();
        assert_eq!(out[0].num_rows(), 1);
    }

    #[test]
    fn bound_batches_are_bounded() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let big = RecordBatch::try_new(schema, vec![Arc::new(arrow::array::Int64Array::from(vec![1; MAX_ROWS + 1]))])
            .unwrap();
        assert!(matches!(encode_batches(&[big]), Err(Error::Parameters(_))));
    }
}
