//! A contract's quality rules (ODCS v3.1 `quality`, on the schema object and on properties),
//! parsed once when the contract loads.
//!
//! Kinds meshgate runs: `library` metrics (`nullValues`, `missingValues`, `invalidValues`,
//! `duplicateValues`, `rowCount`) and `sql` queries, each compared with one operator. `text`
//! rules are documentation and shown as declared. Anything else (`custom` engines, a library
//! metric meshgate does not know) is a load error: a rule the gateway cannot run must not look
//! as if it passed.

use serde::Serialize;
use serde_json::Value;

/// Where a rule applies: the whole table, or one column.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The schema object (the table).
    Table,
    /// One property (column), by name.
    Column(String),
}

/// What a rule measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Rows where the column is null.
    NullValues,
    /// Rows whose value is null or one of the listed "missing" values.
    MissingValues(Vec<Value>),
    /// Non-null values outside `valid` or not matching `pattern`.
    InvalidValues {
        /// Allowed values, if listed.
        valid: Option<Vec<Value>>,
        /// A regular expression every value must match, if given.
        pattern: Option<String>,
    },
    /// Rows minus distinct values of the columns.
    DuplicateValues(Vec<String>),
    /// Rows in the table.
    RowCount,
    /// A query over the product returning one number (or boolean).
    Sql(String),
    /// Human-readable text; not run.
    Text,
}

impl Check {
    /// The metric's name as the standard spells it (`sql` and `text` for those kinds).
    pub fn metric(&self) -> &'static str {
        match self {
            Self::NullValues => "nullValues",
            Self::MissingValues(_) => "missingValues",
            Self::InvalidValues { .. } => "invalidValues",
            Self::DuplicateValues(_) => "duplicateValues",
            Self::RowCount => "rowCount",
            Self::Sql(_) => "sql",
            Self::Text => "text",
        }
    }
}

/// The comparison a measured value must satisfy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect {
    /// `mustBe`
    Be(f64),
    /// `mustNotBe`
    NotBe(f64),
    /// `mustBeGreaterThan`
    Gt(f64),
    /// `mustBeGreaterOrEqualTo`
    Ge(f64),
    /// `mustBeLessThan`
    Lt(f64),
    /// `mustBeLessOrEqualTo`
    Le(f64),
    /// `mustBeBetween` (inclusive)
    Between(f64, f64),
    /// `mustNotBeBetween` (inclusive bounds excluded)
    NotBetween(f64, f64),
}

impl Expect {
    /// Whether `v` satisfies the expectation.
    pub fn holds(self, v: f64) -> bool {
        match self {
            Self::Be(x) => v == x,
            Self::NotBe(x) => v != x,
            Self::Gt(x) => v > x,
            Self::Ge(x) => v >= x,
            Self::Lt(x) => v < x,
            Self::Le(x) => v <= x,
            Self::Between(a, b) => a <= v && v <= b,
            Self::NotBetween(a, b) => v < a || b < v,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Be(x) => write!(f, "mustBe {x}"),
            Self::NotBe(x) => write!(f, "mustNotBe {x}"),
            Self::Gt(x) => write!(f, "mustBeGreaterThan {x}"),
            Self::Ge(x) => write!(f, "mustBeGreaterOrEqualTo {x}"),
            Self::Lt(x) => write!(f, "mustBeLessThan {x}"),
            Self::Le(x) => write!(f, "mustBeLessOrEqualTo {x}"),
            Self::Between(a, b) => write!(f, "mustBeBetween [{a}, {b}]"),
            Self::NotBetween(a, b) => write!(f, "mustNotBeBetween [{a}, {b}]"),
        }
    }
}

/// One rule of a contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name: the rule's `id`, else `name`, else `<metric>:<column>`.
    pub name: String,
    /// Where it is declared in the contract (`schema[0].properties[2].quality[0]`).
    pub field: String,
    /// ODCS dimension (`completeness`, `uniqueness`, ...), if given.
    pub dimension: Option<String>,
    /// ODCS severity (`error`, `warning`, `info`); publishing is blocked unless it is `info` or
    /// `warning`.
    pub severity: Option<String>,
    /// Table or column.
    pub scope: Scope,
    /// What is measured.
    pub check: Check,
    /// What the measure must satisfy (`None` for text rules only).
    pub expect: Option<Expect>,
    /// The measure is a percentage of the table's rows (`unit: percent`) instead of a count.
    pub percent: bool,
    /// A cron expression (`scheduler: cron`, `schedule`) for checks of data meshgate does not
    /// write; `None` means the gateway's default interval.
    pub schedule: Option<String>,
    /// The rule's description.
    pub description: Option<String>,
}

impl Rule {
    /// Whether the rule can be run (every kind but `text`).
    pub fn runnable(&self) -> bool {
        self.check != Check::Text
    }

    /// Whether a failure of this rule refuses a publish (`severity` other than `info`/`warning`).
    pub fn blocking(&self) -> bool {
        !matches!(self.severity.as_deref(), Some("info" | "warning"))
    }

    /// The metric's name (`nullValues`, `sql`, `text`, ...).
    pub fn metric(&self) -> &'static str {
        self.check.metric()
    }

    /// The column the rule is about, if any.
    pub fn column(&self) -> Option<&str> {
        match &self.scope {
            Scope::Column(c) => Some(c),
            Scope::Table => None,
        }
    }

    /// The declared rule as JSON, for `describe`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "field": self.field,
            "metric": self.metric(),
            "column": self.column(),
            "dimension": self.dimension,
            "severity": self.severity,
            "expect": self.expect.map(|e| e.to_string()),
            "unit": if self.percent { "percent" } else { "rows" },
            "schedule": self.schedule,
            "description": self.description,
        })
    }
}

const OPERATORS: &[&str] = &[
    "mustBe",
    "mustNotBe",
    "mustBeGreaterThan",
    "mustBeGreaterOrEqualTo",
    "mustBeLessThan",
    "mustBeLessOrEqualTo",
    "mustBeBetween",
    "mustNotBeBetween",
];

/// Every rule of a contract document (`schema[0].quality` and each property's `quality`), or
/// the problems as `(field, message)`. `columns` are the contract's column names.
pub fn parse(contract: &Value, columns: &[String]) -> Result<Vec<Rule>, Vec<(String, String)>> {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    let Some(object) = contract.get("schema").and_then(|s| s.get(0)) else { return Ok(rules) };
    let mut visit = |list: Option<&Value>, base: String, scope: Scope| {
        for (i, v) in list.and_then(Value::as_array).into_iter().flatten().enumerate() {
            let field = format!("{base}.quality[{i}]");
            match rule(v, field.clone(), scope.clone(), columns) {
                Ok(r) => rules.push(r),
                Err(m) => problems.push((field, m)),
            }
        }
    };
    visit(object.get("quality"), "schema[0]".into(), Scope::Table);
    for (j, p) in object.get("properties").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let Some(name) = p.get("name").and_then(Value::as_str) else { continue };
        visit(p.get("quality"), format!("schema[0].properties[{j}]"), Scope::Column(name.to_string()));
    }
    if problems.is_empty() { Ok(rules) } else { Err(problems) }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn number(v: &Value, key: &str) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("`{key}` must be a number"))
}

fn pair(v: &Value, key: &str) -> Result<(f64, f64), String> {
    match v.as_array().map(Vec::as_slice) {
        Some([a, b]) => {
            let (a, b) = (number(a, key)?, number(b, key)?);
            if a <= b { Ok((a, b)) } else { Err(format!("`{key}` lists the smaller bound first: [{b}, {a}]")) }
        }
        _ => Err(format!("`{key}` must be two numbers, smallest first")),
    }
}

fn expectation(v: &Value) -> Result<Option<Expect>, String> {
    let given: Vec<&str> = OPERATORS.iter().copied().filter(|k| v.get(*k).is_some()).collect();
    let op = match given.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        many => return Err(format!("has {} operators ({}); give exactly one", many.len(), many.join(", "))),
    };
    let arg = &v[op];
    Ok(Some(match op {
        "mustBe" => Expect::Be(number(arg, op)?),
        "mustNotBe" => Expect::NotBe(number(arg, op)?),
        "mustBeGreaterThan" => Expect::Gt(number(arg, op)?),
        "mustBeGreaterOrEqualTo" => Expect::Ge(number(arg, op)?),
        "mustBeLessThan" => Expect::Lt(number(arg, op)?),
        "mustBeLessOrEqualTo" => Expect::Le(number(arg, op)?),
        "mustBeBetween" => pair(arg, op).map(|(a, b)| Expect::Between(a, b))?,
        _ => pair(arg, op).map(|(a, b)| Expect::NotBetween(a, b))?,
    }))
}

fn rule(v: &Value, field: String, scope: Scope, columns: &[String]) -> Result<Rule, String> {
    // ODCS: `type` defaults to `library`.
    let kind = text(v, "type").unwrap_or_else(|| "library".into());
    let args = v.get("arguments").cloned().unwrap_or(Value::Null);
    let column = match &scope {
        Scope::Column(c) => Some(c.clone()),
        Scope::Table => None,
    };
    let need_column = |metric: &str| {
        column
            .clone()
            .ok_or_else(|| format!("`{metric}` is a property metric; declare it under the column's `quality`"))
    };
    let check = match kind.as_str() {
        "text" => Check::Text,
        "sql" => {
            let q = text(v, "query").filter(|q| !q.trim().is_empty()).ok_or("a `sql` rule needs a `query`")?;
            Check::Sql(q)
        }
        "library" => {
            let metric = text(v, "metric").ok_or_else(|| {
                "a library rule needs a `metric` (nullValues, missingValues, invalidValues, duplicateValues, rowCount)"
                    .to_string()
            })?;
            match metric.as_str() {
                "nullValues" => {
                    need_column(&metric)?;
                    Check::NullValues
                }
                "missingValues" => {
                    need_column(&metric)?;
                    let listed = args.get("missingValues").and_then(Value::as_array).cloned();
                    Check::MissingValues(listed.unwrap_or_else(|| vec![Value::Null, Value::String(String::new())]))
                }
                "invalidValues" => {
                    need_column(&metric)?;
                    let valid = args.get("validValues").and_then(Value::as_array).cloned();
                    let pattern = args.get("pattern").and_then(Value::as_str).map(str::to_string);
                    if valid.is_none() && pattern.is_none() {
                        return Err("`invalidValues` needs `arguments.validValues` or `arguments.pattern`".into());
                    }
                    if let Some(p) = &pattern {
                        regex_check(p)?;
                    }
                    Check::InvalidValues { valid, pattern }
                }
                "duplicateValues" => {
                    let listed: Option<Vec<String>> = args
                        .get("properties")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect());
                    let cols = match (listed, &column) {
                        (Some(l), _) if !l.is_empty() => l,
                        (_, Some(c)) => vec![c.clone()],
                        _ => {
                            return Err(
                                "a table-level `duplicateValues` needs `arguments.properties` (the key columns)".into(),
                            );
                        }
                    };
                    if let Some(c) = cols.iter().find(|c| !columns.contains(c)) {
                        return Err(format!(
                            "`arguments.properties` names `{c}`, which is not a column of the contract"
                        ));
                    }
                    Check::DuplicateValues(cols)
                }
                "rowCount" => Check::RowCount,
                other => {
                    return Err(format!(
                        "metric `{other}` is not one meshgate runs; use nullValues, missingValues, invalidValues, \
                         duplicateValues or rowCount, or a `sql` rule"
                    ));
                }
            }
        }
        "custom" => {
            let engine = text(v, "engine").unwrap_or_else(|| "an unnamed engine".into());
            return Err(format!(
                "is a `custom` rule for {engine}, which meshgate cannot run; express it as a library metric or a \
                 `sql` rule"
            ));
        }
        other => return Err(format!("type `{other}` is unknown; use library, sql or text")),
    };
    let expect = expectation(v)?;
    if check != Check::Text && expect.is_none() {
        return Err(format!("gives no operator; add one of {}", OPERATORS.join(", ")));
    }
    let percent = match text(v, "unit").as_deref() {
        None | Some("rows") => false,
        Some("percent") => true,
        Some(u) => return Err(format!("unit `{u}` is not one meshgate measures; use `rows` or `percent`")),
    };
    if percent && matches!(check, Check::RowCount | Check::Sql(_)) {
        return Err("`unit: percent` applies to counts of rows with a property; remove it here".into());
    }
    let schedule = match (text(v, "scheduler").as_deref(), text(v, "schedule")) {
        (_, None) => None,
        (None | Some("cron"), Some(s)) => {
            s.parse::<croner::Cron>().map_err(|e| format!("`schedule` `{s}` is not a cron expression: {e}"))?;
            Some(s)
        }
        (Some(other), Some(_)) => return Err(format!("scheduler `{other}` is not one meshgate runs; use `cron`")),
    };
    let name = text(v, "id").or_else(|| text(v, "name")).unwrap_or_else(|| match &column {
        Some(c) => format!("{}:{c}", check.metric()),
        None => check.metric().to_string(),
    });
    Ok(Rule {
        name,
        field,
        dimension: text(v, "dimension"),
        severity: text(v, "severity"),
        scope,
        check,
        expect,
        percent,
        schedule,
        description: text(v, "description"),
    })
}

/// Checks that a pattern compiles with the SQL engine's regular expressions.
fn regex_check(p: &str) -> Result<(), String> {
    regex::Regex::new(p).map(|_| ()).map_err(|e| format!("`arguments.pattern` is not a valid regular expression: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract(table: Value, column: Value) -> Value {
        json!({"schema": [{"name": "t", "quality": table, "properties": [{"name": "a", "quality": column}, {"name": "b"}]}]})
    }

    fn cols() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn library_and_sql_rules_parse_with_their_fields() {
        let c = contract(
            json!([{"metric": "rowCount", "mustBeGreaterThan": 0},
                   {"type": "library", "metric": "duplicateValues", "arguments": {"properties": ["a", "b"]}, "mustBe": 0},
                   {"type": "sql", "query": "SELECT 1", "mustBeBetween": [0, 2], "id": "one"},
                   {"type": "text", "description": "fresh"}]),
            json!([{"metric": "nullValues", "mustBeLessThan": 5, "unit": "percent", "severity": "warning"},
                   {"metric": "invalidValues", "arguments": {"validValues": ["x"]}, "mustBe": 0, "scheduler": "cron", "schedule": "0 20 * * *"}]),
        );
        let rules = parse(&c, &cols()).unwrap();
        assert_eq!(rules.len(), 6);
        assert_eq!(rules[0].check, Check::RowCount);
        assert_eq!(rules[0].name, "rowCount");
        assert_eq!(rules[1].check, Check::DuplicateValues(vec!["a".into(), "b".into()]));
        assert_eq!(rules[2].name, "one");
        assert_eq!(rules[2].expect, Some(Expect::Between(0.0, 2.0)));
        assert!(!rules[3].runnable());
        assert_eq!(rules[4].field, "schema[0].properties[0].quality[0]");
        assert_eq!(rules[4].name, "nullValues:a");
        assert!(rules[4].percent && !rules[4].blocking());
        assert_eq!(rules[5].schedule.as_deref(), Some("0 20 * * *"));
        assert!(rules[5].blocking());
    }

    #[test]
    fn what_cannot_run_is_refused_with_its_field() {
        let cases = [
            (json!([{"type": "custom", "engine": "soda"}]), "soda"),
            (json!([{"metric": "freshness", "mustBe": 0}]), "freshness"),
            (json!([{"metric": "rowCount"}]), "operator"),
            (json!([{"metric": "rowCount", "mustBe": 1, "mustNotBe": 2}]), "exactly one"),
            (json!([{"metric": "nullValues", "mustBe": 0}]), "property metric"),
            (json!([{"metric": "duplicateValues", "arguments": {"properties": ["zz"]}, "mustBe": 0}]), "zz"),
            (json!([{"metric": "rowCount", "mustBeBetween": [5, 1]}]), "smaller bound"),
            (json!([{"type": "sql", "query": "SELECT 1", "mustBe": 1, "schedule": "every day"}]), "cron"),
        ];
        for (table, needle) in cases {
            let e = parse(&contract(table, json!([])), &cols()).unwrap_err();
            assert_eq!(e[0].0, "schema[0].quality[0]");
            assert!(e[0].1.contains(needle), "{needle}: {}", e[0].1);
        }
        let e = parse(
            &contract(json!([]), json!([{"metric": "invalidValues", "arguments": {"pattern": "("}, "mustBe": 0}])),
            &cols(),
        )
        .unwrap_err();
        assert!(e[0].1.contains("regular expression"), "{e:?}");
    }

    #[test]
    fn operators_compare_as_the_standard_says() {
        assert!(Expect::Be(0.0).holds(0.0) && !Expect::Be(0.0).holds(1.0));
        assert!(Expect::Between(1.0, 2.0).holds(2.0) && !Expect::Between(1.0, 2.0).holds(2.5));
        assert!(Expect::NotBetween(1.0, 2.0).holds(0.5) && !Expect::NotBetween(1.0, 2.0).holds(1.0));
        assert!(Expect::Ge(3.0).holds(3.0) && !Expect::Gt(3.0).holds(3.0));
        assert_eq!(Expect::Lt(5.0).to_string(), "mustBeLessThan 5");
    }
}
