//! Loading one product folder: parse, validate, open the data, check the contract against it.
//!
//! Every problem is collected (not just the first), each naming the file, the field and the fix.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::stats::Precision;
use datafusion::execution::session_state::SessionState;
use datafusion::physical_plan::{StatisticsArgs, StatisticsContext};
use meshgate_adapters::{AdapterRegistry, Binding, ObjectStores, OpenContext, Opened};

use super::manifest::{
    CONTRACT_PROPERTIES, ContractManifest, CustomProperty, PRODUCT_PROPERTIES, ProductManifest, Property,
    description_text, team_name,
};
use super::model::{Contract, Port, Problem, Product};
use super::sqltype;
use super::standard::Standard;

/// File name of a product's ODPS manifest.
pub const PRODUCT_FILE: &str = "product.odps.yaml";
const SENSITIVITIES: &[&str] = &["public", "internal", "confidential", "restricted"];
const STATUSES: &[&str] = &["proposed", "draft", "active", "deprecated", "retired"];
const LOGICAL_TYPES: &str = "string, integer, number, boolean, date, timestamp, time, array, object";

/// Whether `s` is a valid domain, product or port name: lowercase ASCII letters, digits, `_`,
/// `-` and `.`, starting with a letter or digit. Names are looked up, never used as paths, but
/// refusing anything else keeps messages and logs unambiguous.
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.len() <= 128
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

/// Loads products with the adapters of one registry.
#[derive(Debug, Clone)]
pub(crate) struct Loader {
    pub(crate) mesh_dir: PathBuf,
    pub(crate) registry: AdapterRegistry,
    pub(crate) state: SessionState,
    /// Folders outside product folders that bindings may read (canonical).
    pub(crate) storage_roots: Arc<[PathBuf]>,
    /// Remote stores bindings may read.
    pub(crate) stores: Arc<ObjectStores>,
}

struct Problems {
    file: String,
    list: Vec<Problem>,
}

impl Problems {
    fn new(file: String) -> Self {
        Self { file, list: Vec::new() }
    }
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem { file: self.file.clone(), field: field.into(), message: message.into() });
    }
    /// The value of `parsed`, or its `(field, message)` problems added and the default.
    fn or_default<T: Default>(&mut self, parsed: Result<T, Vec<(String, String)>>) -> T {
        parsed.unwrap_or_else(|problems| {
            for (field, message) in problems {
                self.add(field, message);
            }
            T::default()
        })
    }
}

impl Loader {
    /// What an adapter may use to open (or check) a binding of the product in `dir`.
    pub(crate) fn open_context(&self, dir: &Path) -> OpenContext {
        OpenContext::new(dir.to_path_buf(), self.state.clone())
            .with_storage_roots(Arc::clone(&self.storage_roots))
            .with_stores(Arc::clone(&self.stores))
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.mesh_dir).unwrap_or(p).to_string_lossy().into_owned()
    }

    fn read_yaml<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        standard: &str,
    ) -> Result<(T, serde_json::Value), Problem> {
        let problem = |message: String| Problem { file: self.rel(path), field: String::new(), message };
        let text = std::fs::read_to_string(path).map_err(|e| problem(format!("cannot be read ({})", e.kind())))?;
        let parsed = serde_yaml::from_str::<T>(&text)
            .map_err(|e| problem(format!("is not a valid {standard} document: {e}")))?;
        let doc =
            serde_yaml::from_str::<serde_json::Value>(&text).map_err(|e| problem(format!("is not valid YAML: {e}")))?;
        Ok((parsed, doc))
    }

    /// Loads the product in `dir` (`<mesh>/<domain>/<product>`).
    pub(crate) async fn load_product(&self, domain: &str, name: &str, dir: &Path) -> Result<Product, Vec<Problem>> {
        let path = dir.join(PRODUCT_FILE);
        let (m, document): (ProductManifest, _) = self.read_yaml(&path, "ODPS v1 DataProduct").map_err(|p| vec![p])?;
        let mut p = Problems::new(self.rel(&path));
        p.list.extend(Standard::Odps.check(&p.file, &document));
        for (what, n) in [("domain folder", domain), ("product folder", name)] {
            if !is_valid_name(n) {
                p.add(
                    "",
                    format!("{what} `{n}` is not a valid name; rename it to lowercase letters, digits, `_`, `-`"),
                );
            }
        }
        if !m.api_version.starts_with("v1.") {
            p.add("apiVersion", format!("is `{}`; meshgate reads ODPS v1 (`apiVersion: v1.0.0`)", m.api_version));
        }
        if m.kind != "DataProduct" {
            p.add("kind", format!("is `{}`; a product manifest has `kind: DataProduct`", m.kind));
        }
        if m.id.trim().is_empty() {
            p.add("id", "is empty; give the product a stable id");
        }
        if let Some(d) = m.domain.as_deref().filter(|d| *d != domain) {
            p.add("domain", format!("is `{d}` but the product is in folder `{domain}`; make them match"));
        }
        check_status(&mut p, "status", &m.status);
        check_custom(&mut p, &m.custom_properties, PRODUCT_PROPERTIES);
        if m.status == "retired" {
            p.add("status", "is `retired`; retired products are not served");
        }
        if m.output_ports.is_empty() {
            p.add("outputPorts", "is empty; declare at least one output port with a `contractId`");
        }
        let mut seen = BTreeSet::new();
        for (i, port) in m.output_ports.iter().enumerate() {
            if !is_valid_name(&port.name) {
                p.add(
                    format!("outputPorts[{i}].name"),
                    format!("`{}` is not a valid name; use lowercase letters, digits, `_`, `-`, `.`", port.name),
                );
            } else if !seen.insert(port.name.clone()) {
                p.add(format!("outputPorts[{i}].name"), format!("port `{}` is declared twice", port.name));
            }
        }
        let default_port = match custom_value(&m.custom_properties, "meshgate.defaultPort") {
            None => 0,
            Some(v) => match v.as_str().and_then(|s| m.output_ports.iter().position(|o| o.name == s)) {
                Some(i) => i,
                None => {
                    p.add("customProperties[meshgate.defaultPort]", "must name one of the output ports");
                    0
                }
            },
        };
        let sensitivity = match custom_value(&m.custom_properties, "meshgate.sensitivity") {
            None => "internal".to_string(),
            Some(v) => match v.as_str().filter(|s| SENSITIVITIES.contains(s)) {
                Some(s) => s.to_string(),
                None => {
                    p.add("customProperties[meshgate.sensitivity]", format!("use one of {}", SENSITIVITIES.join(", ")));
                    String::new()
                }
            },
        };
        if !p.list.is_empty() {
            return Err(p.list);
        }
        let mut ports = Vec::new();
        let mut problems = Vec::new();
        for i in 0..m.output_ports.len() {
            match self.load_port(&m, i, (domain, name), dir).await {
                Ok(port) => ports.push(Arc::new(port)),
                Err(mut e) => problems.append(&mut e),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Product {
            domain: domain.to_string(),
            name: name.to_string(),
            title: m.name.clone().unwrap_or_else(|| name.to_string()),
            id: m.id,
            status: m.status,
            description: description_text(m.description.as_ref()),
            owner: team_name(m.team.as_ref()),
            tags: m.tags,
            sensitivity,
            inputs: m.input_ports.iter().map(|i| i.contract_id.clone()).collect(),
            ports,
            default_port,
            document,
            fingerprint: [0; 32],
        })
    }

    async fn load_port(
        &self,
        m: &ProductManifest,
        i: usize,
        here: (&str, &str),
        dir: &Path,
    ) -> Result<Port, Vec<Problem>> {
        let op = &m.output_ports[i];
        let path = dir.join(format!("{}.odcs.yaml", op.name));
        if !path.is_file() {
            let mut p = Problems::new(self.rel(&dir.join(PRODUCT_FILE)));
            p.add(
                format!("outputPorts[{i}].name"),
                format!(
                    "port `{}` has no contract file `{}.odcs.yaml` beside the product file; add it or fix the name",
                    op.name, op.name
                ),
            );
            return Err(p.list);
        }
        let (c, document): (ContractManifest, _) =
            self.read_yaml(&path, "ODCS v3 DataContract").map_err(|p| vec![p])?;
        let mut p = Problems::new(self.rel(&path));
        p.list.extend(Standard::Odcs.check(&p.file, &document));
        if !c.api_version.starts_with("v3.") {
            p.add("apiVersion", format!("is `{}`; meshgate reads ODCS v3 (`apiVersion: v3.1.0`)", c.api_version));
        }
        if c.kind != "DataContract" {
            p.add("kind", format!("is `{}`; a contract has `kind: DataContract`", c.kind));
        }
        if c.id != op.contract_id {
            p.add(
                "id",
                format!(
                    "is `{}` but the product's port `{}` expects contractId `{}`; make them match",
                    c.id, op.name, op.contract_id
                ),
            );
        }
        if c.version.trim().is_empty() {
            p.add("version", "is empty; give the contract a version such as `1.0.0`");
        }
        check_status(&mut p, "status", &c.status);
        check_custom(&mut p, &c.custom_properties, CONTRACT_PROPERTIES);
        let properties = match c.schema.as_slice() {
            [one] if !one.properties.is_empty() => one.properties.clone(),
            [_] => {
                p.add("schema[0].properties", "is empty; list the columns the port serves");
                vec![]
            }
            other => {
                p.add(
                    "schema",
                    format!("has {} objects; a port serves exactly one table, so give exactly one", other.len()),
                );
                vec![]
            }
        };
        let mut seen = BTreeSet::new();
        for (j, prop) in properties.iter().enumerate() {
            if !seen.insert(prop.name.as_str()) {
                p.add(format!("schema[0].properties[{j}].name"), format!("column `{}` is declared twice", prop.name));
            }
            for (k, r) in prop.relationships.iter().enumerate() {
                if r.kind != "foreignKey" {
                    p.add(
                        format!("schema[0].properties[{j}].relationships[{k}].type"),
                        format!("is `{}`; meshgate reads `foreignKey` relationships", r.kind),
                    );
                } else if r.target(here).is_none() {
                    p.add(
                        format!("schema[0].properties[{j}].relationships[{k}].to"),
                        format!(
                            "is `{}`; name the referenced column as `<table>.<column>` of this contract, or as \
                             `../../<domain>/<product>/<port>.odcs.yaml#/schema/<table>/properties/<column>`",
                            r.to
                        ),
                    );
                }
            }
        }
        let names: Vec<String> = properties.iter().map(|x| x.name.clone()).collect();
        let rules = p.or_default(crate::quality::rules::parse(&document, &names));
        let age_limit = p.or_default(crate::quality::sla::age_limit(&document));
        let acceleration = match custom_value(&c.custom_properties, super::accel::PROPERTY) {
            None => None,
            Some(v) => match super::accel::Acceleration::parse(v) {
                Ok(a) => Some(a),
                Err(e) => {
                    p.add(format!("customProperties[{}]", super::accel::PROPERTY), e);
                    None
                }
            },
        };
        let binding = match custom_value(&c.custom_properties, "meshgate.binding") {
            None => {
                p.add(
                    "customProperties",
                    "has no `meshgate.binding` entry; add one saying where the data is (adapter, location, format)",
                );
                None
            }
            Some(v) => match serde_yaml::from_value::<Binding>(v.clone()) {
                Ok(b) => Some(b),
                Err(e) => {
                    p.add("customProperties[meshgate.binding]", format!("{e}"));
                    None
                }
            },
        };
        let Some(binding) = binding.filter(|_| p.list.is_empty()) else {
            return Err(p.list);
        };
        let ctx = self.open_context(dir).with_declared(declared_schema(&properties));
        let Opened { table, storage, versions } = match self.registry.open(&binding, &ctx).await {
            Ok(t) => t,
            Err(e) => {
                p.add("customProperties[meshgate.binding]", e.to_string());
                return Err(p.list);
            }
        };
        let data_schema = table.schema();
        for (j, prop) in properties.iter().enumerate() {
            if let Err(msg) = check_property(prop, &data_schema) {
                p.add(format!("schema[0].properties[{j}]"), msg);
            }
        }
        if !p.list.is_empty() {
            return Err(p.list);
        }
        let schema = served_schema(m, op.name.as_str(), &c, &properties, &data_schema);
        let (total_records, total_bytes) = self.totals(&table, &properties, &data_schema).await;
        // Below governance: the copy is read exactly as the storage would be.
        let acceleration = acceleration.map(|spec| {
            let label = format!("{}/{}/{}", here.0, here.1, op.name);
            super::accel::Accelerated::start(label, Arc::clone(&table), spec, self.state.clone())
        });
        let table = match &acceleration {
            Some(a) => Arc::clone(a) as Arc<dyn datafusion::catalog::TableProvider>,
            None => table,
        };
        Ok(Port {
            name: op.name.clone(),
            version: op.version.clone(),
            contract: Contract {
                id: c.id,
                version: c.version,
                status: c.status,
                properties,
                document,
                rules,
                age_limit,
            },
            binding,
            table,
            schema,
            total_records,
            total_bytes,
            storage,
            versions,
            acceleration,
            health: Default::default(),
        })
    }

    /// Exact row count and Arrow size of the contract's columns, when the adapter knows them
    /// without reading the data (Parquet footers, memory); -1 otherwise.
    async fn totals(
        &self,
        table: &Arc<dyn datafusion::catalog::TableProvider>,
        props: &[Property],
        data: &SchemaRef,
    ) -> (i64, i64) {
        let projection: Vec<usize> = props.iter().filter_map(|p| data.index_of(&p.name).ok()).collect();
        let Ok(plan) = table.scan(&self.state, Some(&projection), &[], None).await else {
            return (-1, -1);
        };
        let stats = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new());
        match stats {
            Ok(s) => {
                let exact = |p: &Precision<usize>| match p {
                    Precision::Exact(n) => i64::try_from(*n).unwrap_or(-1),
                    _ => -1,
                };
                (exact(&s.num_rows), exact(&s.total_byte_size))
            }
            Err(_) => (-1, -1),
        }
    }
}

fn check_status(p: &mut Problems, field: &str, status: &str) {
    if !STATUSES.contains(&status) {
        p.add(field, format!("is `{status}`; use one of {}", STATUSES.join(", ")));
    }
}

fn check_custom(p: &mut Problems, props: &[CustomProperty], known: &[&str]) {
    for (i, cp) in props.iter().enumerate() {
        if cp.property.starts_with("meshgate.") && !known.contains(&cp.property.as_str()) {
            p.add(
                format!("customProperties[{i}].property"),
                format!("`{}` is not a meshgate setting; known here: {}", cp.property, known.join(", ")),
            );
        }
    }
}

fn custom_value<'a>(props: &'a [CustomProperty], name: &str) -> Option<&'a serde_yaml::Value> {
    props.iter().find(|c| c.property == name).map(|c| &c.value)
}

/// Checks one contract column against the data's schema.
fn check_property(prop: &Property, data: &Schema) -> Result<(), String> {
    let field = data.field_with_name(&prop.name).map_err(|_| {
        let cols: Vec<_> = data.fields().iter().map(|f| f.name().as_str()).collect();
        format!("column `{}` is not in the data; data columns: {}", prop.name, cols.join(", "))
    })?;
    let Some(logical) = prop.logical_type.as_deref() else {
        return Ok(());
    };
    match logical_matches(logical, field.data_type()) {
        None => Err(format!(
            "logicalType `{logical}` of `{}` is not an ODCS logical type; use one of {LOGICAL_TYPES}",
            prop.name
        )),
        Some(false) => Err(format!(
            "column `{}` is declared `{logical}` but the data holds {}; fix the contract or the data",
            prop.name,
            field.data_type()
        )),
        Some(true) => Ok(()),
    }
}

/// Whether Arrow type `dt` can carry ODCS logical type `logical`; `None` for an unknown type.
fn logical_matches(logical: &str, dt: &DataType) -> Option<bool> {
    use DataType::*;
    let dt = match dt {
        Dictionary(_, v) => v.as_ref(),
        other => other,
    };
    Some(match logical {
        "string" => matches!(dt, Utf8 | LargeUtf8 | Utf8View),
        "integer" => dt.is_integer(),
        "number" => dt.is_numeric(),
        "boolean" => matches!(dt, Boolean),
        "date" => matches!(dt, Date32 | Date64 | Timestamp(..)),
        "timestamp" => matches!(dt, Timestamp(..) | Date64),
        "time" => matches!(dt, Time32(_) | Time64(_)),
        "array" => matches!(dt, List(_) | LargeList(_) | FixedSizeList(..) | ListView(_) | LargeListView(_)),
        "object" => matches!(dt, Struct(_) | Map(..)),
        _ => return None,
    })
}

/// The Arrow schema the contract declares, for storage that does not exist yet (a product
/// never published): every column needs a logical type, and a physical type decides the width
/// (`int`, `bigint`, `float`, `decimal(12,2)`, `timestamp_ntz`, ...). `None` when a column's type
/// cannot be taken from the contract.
pub(crate) fn declared_schema(props: &[Property]) -> Option<SchemaRef> {
    let fields: Option<Vec<Field>> = props
        .iter()
        .map(|p| {
            let t = declared_type(p.logical_type.as_deref()?, p.physical_type.as_deref())?;
            Some(Field::new(p.name.clone(), t, !p.required))
        })
        .collect();
    Some(Arc::new(Schema::new(fields?)))
}

/// The Arrow type of an ODCS logical type, narrowed by its physical type where that names a
/// width; timestamps are microseconds (UTC unless the physical type says without zone).
fn declared_type(logical: &str, physical: Option<&str>) -> Option<DataType> {
    use arrow::datatypes::TimeUnit;
    let physical = physical.map(|p| p.trim().to_ascii_lowercase()).unwrap_or_default();
    let decimal = || {
        let inner = physical.strip_prefix("decimal").or_else(|| physical.strip_prefix("numeric"))?;
        let inner = inner.trim().strip_prefix('(')?.strip_suffix(')')?;
        let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
        Some(DataType::Decimal128(p.trim().parse().ok()?, s.trim().parse().ok()?))
    };
    Some(match logical {
        "string" => DataType::Utf8,
        "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "integer" => match physical.as_str() {
            "tinyint" | "int8" | "byte" => DataType::Int8,
            "smallint" | "int16" | "short" => DataType::Int16,
            "int" | "integer" | "int32" => DataType::Int32,
            _ => DataType::Int64,
        },
        "number" => match physical.as_str() {
            "float" | "real" | "float32" | "float4" => DataType::Float32,
            p if p.starts_with("decimal") || p.starts_with("numeric") => decimal()?,
            _ => DataType::Float64,
        },
        "timestamp" => match physical.as_str() {
            "timestamp_ntz" | "timestamp without time zone" => DataType::Timestamp(TimeUnit::Microsecond, None),
            _ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        },
        _ => return None,
    })
}

/// The schema clients see: contract columns in contract order, typed as in the data, with the
/// contract's metadata on the schema and on every field.
fn served_schema(
    m: &ProductManifest,
    port: &str,
    c: &ContractManifest,
    props: &[Property],
    data: &Schema,
) -> SchemaRef {
    let fields: Vec<Field> = props
        .iter()
        .map(|prop| {
            let f = data.field_with_name(&prop.name).expect("checked by check_property");
            let mut md = HashMap::new();
            let mut put = |k: &str, v: Option<&str>| {
                if let Some(v) = v {
                    md.insert(format!("meshgate.{k}"), v.to_string());
                }
            };
            put("classification", prop.classification.as_deref());
            put("logical_type", prop.logical_type.as_deref());
            put("physical_type", prop.physical_type.as_deref());
            put("description", prop.description.as_deref());
            put("primary_key", prop.primary_key.then_some("true"));
            put("required", prop.required.then_some("true"));
            md.extend(sqltype::column_metadata(f.data_type(), prop.description.as_deref()));
            Field::new(prop.name.clone(), f.data_type().clone(), f.is_nullable()).with_metadata(md)
        })
        .collect();
    let mut md = HashMap::new();
    md.insert("meshgate.product_id".to_string(), m.id.clone());
    md.insert("meshgate.port".to_string(), port.to_string());
    md.insert("meshgate.contract_id".to_string(), c.id.clone());
    md.insert("meshgate.contract_version".to_string(), c.version.clone());
    md.insert("meshgate.status".to_string(), c.status.clone());
    if let Some(owner) = team_name(m.team.as_ref()) {
        md.insert("meshgate.owner".to_string(), owner);
    }
    Arc::new(Schema::new_with_metadata(fields, md))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["sales", "order-items", "v1.2", "x_1"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "..", ".x", "Sales", "a/b", "a\\b", "-x", "a b"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn declared_types() {
        use arrow::datatypes::TimeUnit;
        assert_eq!(declared_type("integer", Some("bigint")), Some(DataType::Int64));
        assert_eq!(declared_type("integer", Some("INT")), Some(DataType::Int32));
        assert_eq!(declared_type("number", Some("decimal(12, 2)")), Some(DataType::Decimal128(12, 2)));
        assert_eq!(declared_type("number", Some("decimal(x)")), None);
        assert_eq!(declared_type("number", None), Some(DataType::Float64));
        assert_eq!(declared_type("string", Some("varchar")), Some(DataType::Utf8));
        assert_eq!(
            declared_type("timestamp", None),
            Some(DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())))
        );
        assert_eq!(
            declared_type("timestamp", Some("timestamp_ntz")),
            Some(DataType::Timestamp(TimeUnit::Microsecond, None))
        );
        assert_eq!(declared_type("object", None), None);
        let prop = |name: &str, logical: Option<&str>, required: bool| Property {
            name: name.into(),
            logical_type: logical.map(str::to_string),
            required,
            ..Default::default()
        };
        let s = declared_schema(&[prop("id", Some("integer"), true), prop("note", Some("string"), false)]).unwrap();
        assert!(!s.field(0).is_nullable() && s.field(1).is_nullable());
        assert!(declared_schema(&[prop("id", None, true)]).is_none(), "an untyped column has no declared type");
    }

    #[test]
    fn logical_types() {
        assert_eq!(logical_matches("string", &DataType::Utf8), Some(true));
        assert_eq!(logical_matches("integer", &DataType::Float64), Some(false));
        assert_eq!(logical_matches("number", &DataType::Int32), Some(true));
        assert_eq!(logical_matches("text", &DataType::Utf8), None);
        let dict = DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8));
        assert_eq!(logical_matches("string", &dict), Some(true));
    }
}
