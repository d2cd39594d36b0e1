//! The bundled sample mesh: three domains, five products, deterministic generated data.
//!
//! | product | format | rows (scale 1) | notes |
//! |---|---|---|---|
//! | `sales/orders` | Parquet, hive-partitioned by `region` | 200,000 | `customer_id` joins `customers/profiles` |
//! | `sales/daily_revenue` | Arrow IPC | ~2,900 | derived from orders |
//! | `customers/profiles` | CSV | 50,000 | `full_name`, `email`, `birth_date` classified `pii` |
//! | `logistics/shipments` | NDJSON, 3 files | ~150,000 | `order_id` joins `sales/orders` |
//! | `logistics/warehouses` | CSV | 24 | reference data |
//!
//! Manifests are the files under the repository's `mesh/` folder, compiled in so `meshgate
//! sample write DIR` works from anywhere. Data is generated with a seeded ChaCha RNG: the same
//! scale gives the same bytes on every machine.

use std::path::Path;

mod data;

pub use data::generate;

/// Result with the sample's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why writing the sample failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// File or folder.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Encoding data failed.
    #[error("encoding sample data: {0}")]
    Encode(String),
}

/// Manifests of the sample mesh: (path relative to the mesh folder, content).
pub const MANIFESTS: &[(&str, &str)] = &[
    ("sales/orders/product.odps.yaml", include_str!("../../../mesh/sales/orders/product.odps.yaml")),
    ("sales/orders/v1.odcs.yaml", include_str!("../../../mesh/sales/orders/v1.odcs.yaml")),
    ("sales/daily_revenue/product.odps.yaml", include_str!("../../../mesh/sales/daily_revenue/product.odps.yaml")),
    ("sales/daily_revenue/v1.odcs.yaml", include_str!("../../../mesh/sales/daily_revenue/v1.odcs.yaml")),
    ("customers/profiles/product.odps.yaml", include_str!("../../../mesh/customers/profiles/product.odps.yaml")),
    ("customers/profiles/v1.odcs.yaml", include_str!("../../../mesh/customers/profiles/v1.odcs.yaml")),
    ("logistics/shipments/product.odps.yaml", include_str!("../../../mesh/logistics/shipments/product.odps.yaml")),
    ("logistics/shipments/v1.odcs.yaml", include_str!("../../../mesh/logistics/shipments/v1.odcs.yaml")),
    ("logistics/warehouses/product.odps.yaml", include_str!("../../../mesh/logistics/warehouses/product.odps.yaml")),
    ("logistics/warehouses/v1.odcs.yaml", include_str!("../../../mesh/logistics/warehouses/v1.odcs.yaml")),
    ("_governance/policies/global.cedar", include_str!("../../../mesh/_governance/policies/global.cedar")),
    ("_governance/governance.yaml", include_str!("../../../mesh/_governance/governance.yaml")),
    ("sales/_policies/sales.cedar", include_str!("../../../mesh/sales/_policies/sales.cedar")),
    ("sales/_governance.yaml", include_str!("../../../mesh/sales/_governance.yaml")),
];

/// A development user: (name, roles, attributes, clearance, home domain).
pub type DevUser = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
    Option<&'static str>,
);

/// Development users of the sample. Each one's password is `<name>-dev-password`.
pub const DEV_USERS: &[DevUser] = &[
    ("alice", &["analyst"], &[("region", "EMEA")], None, None),
    ("bob", &["analyst"], &[("region", "AMER")], None, None),
    (
        "carol",
        &["analyst", "privacy_officer", "finance", "sales_admin"],
        &[("region", "EMEA")],
        Some("restricted"),
        None,
    ),
    ("dave", &["data_scientist"], &[], None, None),
    ("erin", &["auditor"], &[], None, None),
    ("olga", &["admin"], &[], None, None),
    ("pat", &["analyst", "partner"], &[("region", "APAC")], None, None),
    // A producer of the sales domain: publishes its products (the policies' `write`).
    ("sam", &["producer"], &[], None, Some("sales")),
];

/// Writes a development authentication setup into `dir` (kept when present): a random gateway
/// secret, the [`DEV_USERS`] and `auth.yaml` tying them together. Returns the `auth.yaml` path.
pub fn write_dev_auth(dir: &Path) -> Result<std::path::PathBuf> {
    use crate::auth::users::{User, Users};
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let secret = dir.join("gateway.secret");
    if !secret.exists() {
        let bytes: [u8; 32] = rand::random();
        std::fs::write(&secret, hex::encode(bytes)).map_err(io(&secret))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).map_err(io(&secret))?;
        }
    }
    let users_file = dir.join("users.yaml");
    if !users_file.exists() {
        let mut users = Users::default();
        for (name, roles, attrs, clearance, domain) in DEV_USERS {
            users.users.insert(
                name.to_string(),
                User {
                    password_hash: Users::hash(&format!("{name}-dev-password")),
                    roles: roles.iter().map(|r| r.to_string()).collect(),
                    clearance: clearance.map(str::to_string),
                    domain: domain.map(str::to_string),
                    attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    ..User::default()
                },
            );
        }
        users.save(&users_file).map_err(io(&users_file))?;
    }
    let auth = dir.join("auth.yaml");
    if !auth.exists() {
        let text = "# Development authentication for the sample mesh. Not for real use.\n\
                    gateway:\n  secret_file: gateway.secret\n  ttl: 8h\nusers_file: users.yaml\n";
        std::fs::write(&auth, text).map_err(io(&auth))?;
    }
    Ok(auth)
}

/// Writes the sample mesh into `dir`: manifests that are missing, and the data of every product
/// whose `data/` folder is missing. Existing files are left alone. Returns the products whose
/// data was generated.
pub fn write(dir: &Path, scale: f64) -> Result<Vec<String>> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    for (rel, content) in MANIFESTS {
        let path = dir.join(rel);
        if !path.exists() {
            std::fs::create_dir_all(path.parent().expect("manifest paths have a folder")).map_err(io(&path))?;
            std::fs::write(&path, content).map_err(io(&path))?;
        }
    }
    let missing: Vec<&str> = data::PRODUCTS.iter().copied().filter(|p| !dir.join(p).join("data").exists()).collect();
    if missing.is_empty() {
        return Ok(vec![]);
    }
    let generated = generate(scale);
    for product in &missing {
        let final_dir = dir.join(product).join("data");
        // Written beside, then renamed, so a half-written sample is never served.
        let tmp = dir.join(product).join(".data.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        generated.write_product(product, &tmp)?;
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    }
    tracing::info!(products = ?missing, scale, "sample data generated");
    Ok(missing.into_iter().map(str::to_string).collect())
}
