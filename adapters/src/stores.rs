//! Object stores from the operator's configuration: S3 (and S3-compatible servers), Google Cloud
//! Storage, Azure Blob Storage and plain HTTP(S), through the `object_store` crate.
//!
//! The operator lists the buckets the gateway may read in a stores file (`--stores`), each with
//! its options (endpoint, region, path-style requests, ...) and credentials *by reference*
//! ([`SecretRef`]); a credential in clear is refused. Without credentials, S3 uses the standard
//! AWS chain (`AWS_*` variables, web identity, container and instance credentials), GCS and Azure
//! their own environment. A bucket may be restricted to some domains, so one domain's binding
//! cannot read another domain's bucket with the gateway's credentials.
//!
//! ```yaml
//! stores:
//!   - url: s3://sales-lake
//!     domains: [sales]
//!     options: {aws_endpoint: "https://minio.internal:9000", aws_region: eu-west-1,
//!               aws_virtual_hosted_style_request: false}
//!     secrets: {aws_access_key_id: {env: SALES_KEY_ID}, aws_secret_access_key: {file: /run/secrets/sales}}
//!     timeout: 30s
//! ```
//!
//! Listings of remote locations are cached ([`RemoteListings`]) so a read does not list the bucket
//! again; local folders are always listed afresh.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::{HashMap, TableReference};
use datafusion::execution::cache::cache_manager::CachedFileList;
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::cache::{Cache, CacheEntryInfo, TableScopedPath};
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use serde::Deserialize;
use url::Url;

use crate::flight::FlightConfig;
use crate::postgres::PostgresConfig;
use crate::secret::SecretRef;
use crate::{Error, Result};

/// The stores file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoresFile {
    /// One entry per bucket, container or HTTP host.
    #[serde(default)]
    pub stores: Vec<StoreConfig>,
    /// One entry per PostgreSQL database.
    #[serde(default)]
    pub postgres: Vec<PostgresConfig>,
    /// One entry per remote Flight server.
    #[serde(default)]
    pub flight: Vec<FlightConfig>,
}

/// One bucket (S3, GCS), container (Azure) or host (HTTP) the gateway may read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreConfig {
    /// `s3://bucket`, `gs://bucket`, `az://container`, `http(s)://host[:port]`: scheme and
    /// bucket only, no path.
    pub url: String,
    /// Domains whose bindings may read it; absent: every domain.
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// `object_store` options for the scheme (`aws_endpoint`, `aws_region`,
    /// `aws_virtual_hosted_style_request`, `aws_allow_http`, `google_service_account`,
    /// `azure_storage_account_name`, ...). Credentials are refused here: see `secrets`.
    #[serde(default)]
    pub options: BTreeMap<String, serde_json::Value>,
    /// `object_store` options that hold credentials, each a reference.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// How long one request may take (default 30s); a slower store is reported unavailable.
    #[serde(default)]
    pub timeout: Option<String>,
    /// How long connecting may take (default 5s).
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Retries of a failed request, within `timeout` (default 2).
    #[serde(default)]
    pub retries: Option<usize>,
}

/// Option names that carry credentials; they belong under `secrets`.
const SECRET_WORDS: &[&str] = &["secret", "password", "token", "_key", "credential", "sas"];

pub(crate) fn duration(field: &str, v: &Option<String>, default: Duration) -> Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s.trim())
            .map_err(|_| Error::InvalidBinding(format!("`{field}: {s}` is not a duration; write e.g. 30s or 2m"))),
    }
}

impl StoreConfig {
    /// The store's root URL (`scheme://bucket`), checked.
    fn root(&self) -> Result<Url> {
        let bad = |why: &str| Error::InvalidBinding(format!("store `{}`: {why}", self.url));
        let url = Url::parse(&self.url).map_err(|_| bad("is not a URL; write e.g. `s3://bucket`"))?;
        if !matches!(url.scheme(), "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "http" | "https") {
            return Err(bad("scheme is not one of s3, gs, az, abfs, abfss, http, https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("names no bucket (or host)"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(bad("has a path; give the bucket only (bindings name the path)"));
        }
        Ok(url)
    }

    /// Every option as text, secrets resolved; refuses a credential written in `options`.
    fn pairs(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (k, v) in &self.options {
            let lower = k.to_ascii_lowercase();
            if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
                return Err(Error::InvalidBinding(format!(
                    "store `{}`: option `{k}` holds a credential; move it under `secrets:` as \
                     `{k}: {{env: VARIABLE}}` or `{k}: {{file: /path}}`",
                    self.url
                )));
            }
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(_) | serde_json::Value::Number(_) => v.to_string(),
                _ => {
                    return Err(Error::InvalidBinding(format!(
                        "store `{}`: option `{k}` must be text, a number or true/false",
                        self.url
                    )));
                }
            };
            out.push((k.clone(), text));
        }
        for (k, r) in &self.secrets {
            let value = r.resolve().map_err(|e| Error::InvalidBinding(format!("store `{}`: {e}", self.url)))?;
            out.push((k.clone(), value.expose().to_string()));
        }
        Ok(out)
    }

    /// Builds the store. Nothing is contacted: an unreachable store is found when read.
    pub fn build(&self) -> Result<(Url, Arc<dyn ObjectStore>)> {
        let root = self.root()?;
        let timeout = duration("timeout", &self.timeout, Duration::from_secs(30))?;
        let connect = duration("connectTimeout", &self.connect_timeout, Duration::from_secs(5))?;
        let client = ClientOptions::new().with_timeout(timeout).with_connect_timeout(connect);
        let retry =
            RetryConfig { max_retries: self.retries.unwrap_or(2), retry_timeout: timeout, ..Default::default() };
        let pairs = self.pairs()?;
        let unknown = |k: &str, kind: &str| {
            Error::InvalidBinding(format!("store `{}`: `{k}` is not an option of {kind} stores", self.url))
        };
        let failed = |e: object_store::Error| Error::InvalidBinding(format!("store `{}`: {e}", self.url));
        // The four builders share no trait: one arm each, the same steps.
        macro_rules! build {
            ($builder:expr, $kind:literal) => {{
                let mut b = $builder.with_url(root.as_str()).with_client_options(client);
                for (k, v) in pairs {
                    b = b.with_config(k.parse().map_err(|_| unknown(&k, $kind))?, v);
                }
                Arc::new(b.with_retry(retry).build().map_err(failed)?)
            }};
        }
        let store: Arc<dyn ObjectStore> = match root.scheme() {
            "s3" | "s3a" => build!(object_store::aws::AmazonS3Builder::from_env(), "S3"),
            "gs" => build!(object_store::gcp::GoogleCloudStorageBuilder::from_env(), "GCS"),
            "az" | "abfs" | "abfss" => build!(object_store::azure::MicrosoftAzureBuilder::from_env(), "Azure"),
            _ => build!(object_store::http::HttpBuilder::new(), "HTTP"),
        };
        Ok((root, store))
    }
}

/// A configured store.
#[derive(Debug)]
struct Entry {
    root: Url,
    domains: Option<Vec<String>>,
    store: Arc<dyn ObjectStore>,
}

/// The stores the operator configured: buckets by root URL, databases by name.
#[derive(Debug, Default)]
pub struct ObjectStores {
    entries: Vec<Entry>,
    databases: BTreeMap<String, PostgresConfig>,
    servers: BTreeMap<String, FlightConfig>,
}

impl ObjectStores {
    /// Reads and builds the stores file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidBinding(format!("stores file {} cannot be read ({})", path.display(), e.kind()))
        })?;
        let file: StoresFile = serde_yaml::from_str(&text)
            .map_err(|e| Error::InvalidBinding(format!("stores file {}: {e}", path.display())))?;
        Self::build(&file.stores)?.with_postgres(file.postgres)?.with_flight(file.flight)
    }

    /// Adds remote Flight servers; a name given twice is an error.
    pub fn with_flight(mut self, servers: Vec<FlightConfig>) -> Result<Self> {
        add_named(&mut self.servers, servers)?;
        Ok(self)
    }

    /// The remote server `name`, if it is configured and open to `domain`.
    pub fn flight(&self, name: &str, domain: &str) -> Result<&FlightConfig> {
        named(&self.servers, name, domain)
    }

    /// Adds PostgreSQL databases; a name given twice is an error.
    pub fn with_postgres(mut self, databases: Vec<PostgresConfig>) -> Result<Self> {
        add_named(&mut self.databases, databases)?;
        Ok(self)
    }

    /// The database `name`, if it is configured and open to `domain`.
    pub fn postgres(&self, name: &str, domain: &str) -> Result<&PostgresConfig> {
        named(&self.databases, name, domain)
    }

    /// Builds `configs`; a root given twice is an error.
    pub fn build(configs: &[StoreConfig]) -> Result<Self> {
        let mut entries: Vec<Entry> = Vec::new();
        for c in configs {
            let (root, store) = c.build()?;
            if entries.iter().any(|e| same_root(&e.root, &root)) {
                return Err(Error::InvalidBinding(format!("store `{}` is configured twice", c.url)));
            }
            entries.push(Entry { root, domains: c.domains.clone(), store });
        }
        Ok(Self { entries, databases: BTreeMap::new(), servers: BTreeMap::new() })
    }

    /// Registers every store with the query engine's runtime, where listing tables find them.
    pub fn register_in(&self, runtime: &RuntimeEnv) {
        for e in &self.entries {
            runtime.register_object_store(&e.root, Arc::clone(&e.store));
        }
    }

    /// Whether a binding of `domain` may read the remote location `url`: its bucket is
    /// configured and open to the domain. The error says what the operator must add.
    pub fn check(&self, url: &Url, domain: &str) -> Result<()> {
        let Some(e) = self.entries.iter().find(|e| same_root(&e.root, url)) else {
            return Err(Error::InvalidBinding(format!(
                "location `{url}` is in `{}://{}`, which is not a configured store; ask the operator to add it to the stores file (--stores)",
                url.scheme(),
                url.host_str().unwrap_or_default()
            )));
        };
        match &e.domains {
            Some(d) if !d.iter().any(|d| d == domain) => Err(Error::InvalidBinding(format!(
                "location `{url}`: store `{}` is not open to domain `{domain}`; ask the operator to add the domain to its `domains`",
                e.root
            ))),
            _ => Ok(()),
        }
    }
}

/// An entry of the stores file that bindings name (a database, a remote server).
pub(crate) trait Named {
    /// What it is, for messages (`database`).
    const WHAT: &'static str;
    /// Its list's key in the stores file (`postgres`).
    const KEY: &'static str;
    /// Its name.
    fn name(&self) -> &str;
    /// The domains it is open to; `None`: every domain.
    fn domains(&self) -> Option<&[String]>;
    /// Checks what can be checked without connecting.
    fn validate(&self) -> Result<()>;
}

impl Named for PostgresConfig {
    const WHAT: &'static str = "database";
    const KEY: &'static str = "postgres";
    fn name(&self) -> &str {
        &self.name
    }
    fn domains(&self) -> Option<&[String]> {
        self.domains.as_deref()
    }
    fn validate(&self) -> Result<()> {
        PostgresConfig::validate(self)
    }
}

impl Named for FlightConfig {
    const WHAT: &'static str = "server";
    const KEY: &'static str = "flight";
    fn name(&self) -> &str {
        &self.name
    }
    fn domains(&self) -> Option<&[String]> {
        self.domains.as_deref()
    }
    fn validate(&self) -> Result<()> {
        FlightConfig::validate(self)
    }
}

/// Adds `items` by name, each checked; a name given twice is an error.
fn add_named<T: Named>(map: &mut BTreeMap<String, T>, items: Vec<T>) -> Result<()> {
    for item in items {
        item.validate()?;
        if map.contains_key(item.name()) {
            return Err(Error::InvalidBinding(format!("{} `{}` is configured twice", T::WHAT, item.name())));
        }
        map.insert(item.name().to_string(), item);
    }
    Ok(())
}

/// The entry `name`, if it is configured and open to `domain`; the error says what to add.
fn named<'a, T: Named>(map: &'a BTreeMap<String, T>, name: &str, domain: &str) -> Result<&'a T> {
    let (what, key) = (T::WHAT, T::KEY);
    let item = map.get(name).ok_or_else(|| {
        Error::InvalidBinding(format!(
            "{what} `{name}` is not configured; ask the operator to add it under `{key}:` in the stores file (--stores)"
        ))
    })?;
    match item.domains() {
        Some(ds) if !ds.iter().any(|d| d == domain) => Err(Error::InvalidBinding(format!(
            "{what} `{name}` is not open to domain `{domain}`; ask the operator to add the domain to its `domains`"
        ))),
        _ => Ok(item),
    }
}

fn same_root(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// DataFusion's listing cache, kept only for tables that name themselves in their listing URL
/// (the `files` adapter does so for remote locations): a read of a bucket does not list it again
/// until the entry is `ttl` old or the product is re-opened. Local folders are never cached, so
/// files that appear or disappear there are seen on the next read.
pub struct RemoteListings {
    inner: DefaultCache<TableScopedPath, CachedFileList>,
}

impl std::fmt::Debug for RemoteListings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteListings").field("entries", &self.inner.len()).finish()
    }
}

impl RemoteListings {
    /// A cache of at most `limit` bytes whose entries live `ttl`.
    pub fn new(limit: usize, ttl: Duration) -> Self {
        Self { inner: DefaultCache::new_with_ttl(limit, Some(ttl)).with_name("meshgate-remote-listings") }
    }
}

impl Cache<TableScopedPath, CachedFileList> for RemoteListings {
    fn get(&self, key: &TableScopedPath) -> Option<CachedFileList> {
        key.table.as_ref()?;
        self.inner.get(key)
    }
    fn put(&self, key: &TableScopedPath, value: CachedFileList) -> Option<CachedFileList> {
        key.table.as_ref()?;
        self.inner.put(key, value)
    }
    fn remove(&self, k: &TableScopedPath) -> Option<CachedFileList> {
        self.inner.remove(k)
    }
    fn contains_key(&self, k: &TableScopedPath) -> bool {
        self.inner.contains_key(k)
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn clear(&self) {
        self.inner.clear()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn cache_limit(&self) -> usize {
        self.inner.cache_limit()
    }
    fn update_cache_limit(&self, limit: usize) {
        self.inner.update_cache_limit(limit)
    }
    fn cache_ttl(&self) -> Option<Duration> {
        self.inner.cache_ttl()
    }
    fn update_cache_ttl(&self, ttl: Option<Duration>) {
        self.inner.update_cache_ttl(ttl)
    }
    fn drop_table_entries(&self, table_ref: &TableReference) -> datafusion::error::Result<()> {
        self.inner.drop_table_entries(table_ref)
    }
    fn list_entries(&self) -> HashMap<TableScopedPath, CacheEntryInfo<CachedFileList>> {
        self.inner.list_entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> StoreConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn credentials_only_by_reference() {
        let e = config("url: s3://b\noptions: {aws_secret_access_key: abc}\n").build().unwrap_err().to_string();
        assert!(e.contains("aws_secret_access_key") && e.contains("secrets:") && !e.contains("abc"), "{e}");
        let e = serde_yaml::from_str::<StoreConfig>("url: s3://b\nsecrets: {aws_secret_access_key: abc}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("never written"), "{e}");
        let e = config("url: s3://b\nsecrets: {aws_secret_access_key: {env: MESHGATE_TEST_UNSET_S3}}\n")
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("MESHGATE_TEST_UNSET_S3"), "{e}");
    }

    #[test]
    fn roots_options_and_domains_are_checked() {
        for bad in ["url: s3://b/path", "url: ftp://b", "url: 'not a url'", "url: s3://b\ntimeout: soon"] {
            assert!(config(bad).build().is_err(), "{bad}");
        }
        let e = config("url: s3://b\noptions: {aws_endpont: x}\n").build().unwrap_err().to_string();
        assert!(e.contains("aws_endpont"), "{e}");
        let stores = ObjectStores::build(&[
            config("url: s3://sales\ndomains: [sales]\noptions: {aws_region: us-east-1, aws_allow_http: true}"),
            config("url: https://files.example.org"),
        ])
        .unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(stores.check(&url("s3://sales/orders/"), "sales").is_ok());
        let e = stores.check(&url("s3://sales/orders/"), "customers").unwrap_err().to_string();
        assert!(e.contains("not open to domain `customers`"), "{e}");
        let e = stores.check(&url("s3://hr/salaries/"), "sales").unwrap_err().to_string();
        assert!(e.contains("not a configured store") && e.contains("--stores"), "{e}");
        assert!(stores.check(&url("https://files.example.org/x.csv"), "any").is_ok());
        assert!(stores.check(&url("https://files.example.org:8443/x.csv"), "any").is_err());
        let twice = ObjectStores::build(&[config("url: s3://b"), config("url: s3://b/")]);
        assert!(twice.is_err());
    }

    #[test]
    fn only_named_tables_are_cached() {
        let cache = RemoteListings::new(1 << 20, Duration::from_secs(60));
        let local = TableScopedPath { table: None, path: "data".into() };
        let remote = TableScopedPath { table: Some(TableReference::bare("s3://b/data/")), path: "data".into() };
        let files = || {
            CachedFileList::from(vec![object_store::ObjectMeta {
                location: "data/a.parquet".into(),
                last_modified: Default::default(),
                size: 1,
                e_tag: None,
                version: None,
            }])
        };
        cache.put(&local, files());
        cache.put(&remote, files());
        assert!(cache.get(&local).is_none());
        assert!(cache.get(&remote).is_some());
        cache.drop_table_entries(&TableReference::bare("s3://b/data/")).unwrap();
        assert!(cache.get(&remote).is_none());
    }
}
