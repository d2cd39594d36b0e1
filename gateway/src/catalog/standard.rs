//! Validation of manifests against the official JSON Schemas of their standards.
//!
//! The schemas (ODPS v1.0.0 and ODCS v3.1.0, JSON Schema draft 2019-09) are bundled unmodified
//! in `catalog/standards/` and compiled once. Every violation becomes a [`Problem`] naming the
//! file, the field (`schema[0].properties[1].quality[0]`) and what the standard expects, so a
//! manifest that other tools of the ecosystem would reject is never served.

use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::Value;

use super::model::Problem;

/// The standards a manifest can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standard {
    /// Open Data Product Standard v1.0.0 (`product.odps.yaml`).
    Odps,
    /// Open Data Contract Standard v3.1.0 (`<port>.odcs.yaml`).
    Odcs,
}

static ODPS: LazyLock<Validator> = LazyLock::new(|| compile(include_str!("standards/odps-json-schema-v1.0.0.json")));
static ODCS: LazyLock<Validator> = LazyLock::new(|| compile(include_str!("standards/odcs-json-schema-v3.1.0.json")));

/// Compiles a bundled schema. They are part of the binary and covered by tests, so a failure
/// here is a build defect, not an input error.
fn compile(text: &str) -> Validator {
    let schema: Value = serde_json::from_str(text).expect("bundled JSON Schema is valid JSON");
    jsonschema::draft201909::options()
        .should_validate_formats(false)
        .build(&schema)
        .expect("bundled JSON Schema compiles")
}

impl Standard {
    /// Name and version, as messages say it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Odps => "ODPS v1.0.0",
            Self::Odcs => "ODCS v3.1.0",
        }
    }

    fn validator(self) -> &'static Validator {
        match self {
            Self::Odps => &ODPS,
            Self::Odcs => &ODCS,
        }
    }

    /// Every violation of the standard in `doc`, as problems of `file`; empty when valid.
    pub(crate) fn check(self, file: &str, doc: &Value) -> Vec<Problem> {
        let mut out: Vec<Problem> = Vec::new();
        for e in self.validator().iter_errors(doc) {
            let field = field_path(&e.instance_path().to_string());
            let message = format!("{e} (not valid {}; see the standard's JSON Schema)", self.label());
            // Alternatives (`oneOf`, `anyOf`) report the same spot several times; one is enough.
            if out.iter().any(|p| p.field == field) {
                continue;
            }
            out.push(Problem { file: file.to_string(), field, message });
        }
        out
    }
}

/// `/schema/0/properties/1` → `schema[0].properties[1]` (the way every other problem names a
/// field).
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.parse::<usize>().is_ok() {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_become_field_paths() {
        assert_eq!(field_path(""), "");
        assert_eq!(field_path("/quality"), "quality");
        assert_eq!(field_path("/schema/0/properties/12/quality/0"), "schema[0].properties[12].quality[0]");
        assert_eq!(field_path("/customProperties/0/a~1b"), "customProperties[0].a/b");
    }

    fn contract() -> Value {
        json!({
            "apiVersion": "v3.1.0", "kind": "DataContract", "id": "c", "version": "1.0.0", "status": "active",
            "schema": [{"name": "t", "properties": [{"name": "a", "logicalType": "integer",
                "quality": [{"type": "library", "metric": "nullValues", "mustBe": 0}]}]}]
        })
    }

    #[test]
    fn a_valid_contract_passes() {
        assert_eq!(Standard::Odcs.check("c.odcs.yaml", &contract()), vec![]);
    }

    #[test]
    fn top_level_quality_and_deprecated_rule_are_refused() {
        let mut doc = contract();
        doc["quality"] = json!([{"type": "library", "rule": "uniqueness", "column": "a"}]);
        let problems = Standard::Odcs.check("c.odcs.yaml", &doc);
        assert!(problems.iter().any(|p| p.field.is_empty() && p.message.contains("quality")), "{problems:?}");
        assert!(problems.iter().all(|p| p.message.contains("ODCS v3.1.0") && p.file == "c.odcs.yaml"));
    }

    #[test]
    fn an_unknown_metric_names_its_field() {
        let mut doc = contract();
        doc["schema"][0]["properties"][0]["quality"][0]["metric"] = json!("nullz");
        let problems = Standard::Odcs.check("c.odcs.yaml", &doc);
        assert!(problems.iter().any(|p| p.field.starts_with("schema[0].properties[0].quality[0]")), "{problems:?}");
    }

    #[test]
    fn products_are_checked_against_odps() {
        let ok = json!({"apiVersion": "v1.0.0", "kind": "DataProduct", "id": "p", "status": "active"});
        assert_eq!(Standard::Odps.check("product.odps.yaml", &ok), vec![]);
        let bad = json!({"apiVersion": "v1.0.0", "kind": "DataProduct", "id": "p", "status": "active", "owner": "x"});
        let problems = Standard::Odps.check("product.odps.yaml", &bad);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("owner"), "{problems:?}");
    }
}
