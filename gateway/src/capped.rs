//! Functions whose output size is chosen by their arguments, capped.
//!
//! DataFusion's memory pool accounts for operators (sorts, joins, aggregations), not for what a
//! scalar function allocates: `length(repeat('x', 300000000)) > 0` in a filter grows the process
//! by gigabytes whatever `--memory-limit-mb` says. Each function here is wrapped so that, before
//! it runs on a batch, the bytes its arguments ask for are added up; past the limit the call
//! fails with `ResourcesExhausted` (gRPC `RESOURCE_EXHAUSTED`) naming the limit, and nothing is
//! allocated.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// How a function's output size follows from its arguments (bytes for one batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text's bytes times `n`.
    TextTimesCount,
    /// `lpad(text, n[, fill])`, `rpad`: `n` characters of up to 4 bytes.
    PadToCount,
    /// `array_repeat(value, n)`, `array_resize(array, n[, value])`: `n` elements.
    CountElements,
    /// `range(start, stop[, step])`, `generate_series`: `(stop - start) / step` elements.
    RangeElements,
    /// `replace(text, from, to)`, `regexp_replace(text, pattern, to)`: every character of the text
    /// replaced by `to` at worst.
    TextTimesReplacement,
}

/// The functions capped, with how each grows.
const CAPPED: &[(&str, Growth)] = &[
    ("repeat", Growth::TextTimesCount),
    ("lpad", Growth::PadToCount),
    ("rpad", Growth::PadToCount),
    ("array_repeat", Growth::CountElements),
    ("array_resize", Growth::CountElements),
    ("range", Growth::RangeElements),
    ("generate_series", Growth::RangeElements),
    ("replace", Growth::TextTimesReplacement),
    ("regexp_replace", Growth::TextTimesReplacement),
];

/// Replaces each capped function registered in `ctx` by its capped form, with `limit_bytes` as
/// the most one call on one batch may ask for.
pub fn register(ctx: &SessionContext, limit_bytes: usize) {
    for (name, growth) in CAPPED {
        if let Ok(inner) = ctx.udf(name) {
            let capped = Capped { inner, growth: *growth, limit_bytes };
            ctx.register_udf(ScalarUDF::new_from_impl(capped));
        }
    }
}

/// A function refused when its arguments ask for more than `limit_bytes`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Capped {
    inner: Arc<ScalarUDF>,
    growth: Growth,
    limit_bytes: usize,
}

/// Row `i` of an argument as an integer (NULL and non-integers as 0).
fn int_at(arg: &ColumnarValue, i: usize) -> i64 {
    match arg {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64) {
            Ok(ScalarValue::Int64(Some(v))) => v,
            _ => 0,
        },
        ColumnarValue::Array(a) => {
            a.as_primitive_opt::<Int64Type>().filter(|a| a.is_valid(i)).map_or(0, |a| a.value(i))
        }
    }
}

/// Row `i` of an argument as a byte length (text, binary, lists: their size; else 8).
fn len_at(arg: &ColumnarValue, i: usize) -> u64 {
    let of = |a: &ArrayRef, i: usize| -> u64 {
        if a.is_null(i) {
            return 0;
        }
        match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().value(i).len() as u64,
            DataType::LargeUtf8 => a.as_string::<i64>().value(i).len() as u64,
            DataType::Utf8View => a.as_string_view().value(i).len() as u64,
            DataType::Binary => a.as_binary::<i32>().value(i).len() as u64,
            DataType::LargeBinary => a.as_binary::<i64>().value(i).len() as u64,
            DataType::BinaryView => a.as_binary_view().value(i).len() as u64,
            _ => a.slice(i, 1).to_data().get_slice_memory_size().map_or(8, |n| n as u64),
        }
    };
    match arg {
        ColumnarValue::Scalar(s) => s.to_array_of_size(1).map_or(8, |a| of(&a, 0)),
        ColumnarValue::Array(a) => of(a, i),
    }
}

impl Capped {
    /// Bytes the call on this batch would produce, saturating.
    fn demand(&self, args: &[ColumnarValue], rows: usize) -> u64 {
        let arrays = args.iter().any(|a| matches!(a, ColumnarValue::Array(_)));
        let rows = if arrays { rows } else { 1 };
        let count = |i: usize, at: usize| args.get(at).map_or(0, |a| int_at(a, i)).max(0) as u64;
        let length = |i: usize, at: usize| args.get(at).map_or(0, |a| len_at(a, i));
        let mut total: u64 = 0;
        for i in 0..rows {
            let row = match self.growth {
                Growth::TextTimesCount => length(i, 0).saturating_mul(count(i, 1)),
                Growth::PadToCount => count(i, 1).saturating_mul(4),
                Growth::CountElements => {
                    count(i, 1).saturating_mul(length(i, if args.len() > 2 { 2 } else { 0 }).max(8))
                }
                Growth::RangeElements => {
                    let (start, stop) = match args.len() {
                        1 => (0, args.first().map_or(0, |a| int_at(a, i))),
                        _ => (args.first().map_or(0, |a| int_at(a, i)), args.get(1).map_or(0, |a| int_at(a, i))),
                    };
                    let step = args.get(2).map_or(1, |a| int_at(a, i)).unsigned_abs().max(1);
                    (stop.abs_diff(start) / step).saturating_mul(8)
                }
                Growth::TextTimesReplacement => length(i, 0).saturating_add(1).saturating_mul(length(i, 2).max(1)),
            };
            total = total.saturating_add(row);
        }
        total
    }
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let demand = self.demand(&args.args, args.number_rows);
        if demand > self.limit_bytes as u64 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "`{}` would allocate {demand} bytes, over the gateway's memory limit of {} MiB \
                 (--memory-limit-mb); ask for less",
                self.name(),
                self.limit_bytes >> 20
            )));
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn functions_that_allocate_by_argument_are_capped() {
        let ctx = SessionContext::new();
        register(&ctx, 1 << 20);
        ctx.sql("CREATE TABLE t AS VALUES ('ab', 3), ('cd', 4)").await.unwrap().collect().await.unwrap();
        assert_eq!(run(&ctx, "SELECT repeat(column1, column2) FROM t").await.unwrap(), 2);
        assert_eq!(run(&ctx, "SELECT lpad(column1, 10, '*') FROM t").await.unwrap(), 2);
        for sql in [
            "SELECT length(repeat('x', 300000000)) > 0",
            "SELECT repeat(column1, 100000000) FROM t",
            "SELECT lpad('x', 2147483647)",
            "SELECT rpad(column1, 100000000) FROM t",
            "SELECT array_repeat(1, 100000000)",
            "SELECT range(0, 1000000000)",
            "SELECT generate_series(1, 1000000000, 1)",
            "SELECT replace(column1, 'a', repeat('y', 1000)) FROM (SELECT repeat('a', 2000) AS column1)",
        ] {
            let e = run(&ctx, sql).await.unwrap_err();
            assert!(
                matches!(e.find_root(), DataFusionError::ResourcesExhausted(m) if m.contains("memory limit of 1 MiB")),
                "{sql}: {e}"
            );
        }
    }
}
