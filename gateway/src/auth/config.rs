//! Authentication configuration (`--auth FILE`, YAML).
//!
//! ```yaml
//! leeway_seconds: 30            # clock skew allowed on exp/nbf; at most 30
//! gateway:                      # tokens meshgate issues itself (Handshake, `meshgate token issue`)
//!   secret_file: gateway.secret # or secret_env: MESHGATE_TOKEN_SECRET
//!   ttl: 1h
//! users_file: users.yaml        # Basic credentials for Handshake (argon2 hashes)
//! mtls_identities: certs.yaml   # roles of client-certificate subjects (--tls-client-ca)
//! issuers:
//!   - issuer: https://login.example.com
//!     audiences: [meshgate]
//!     algorithms: [RS256]
//!     jwks_url: https://login.example.com/jwks.json  # or jwks_file, pem_file, secret_env
//!     claims: {roles: groups, attributes: {region: sales_region}}
//! ```
//!
//! Relative paths are relative to the configuration file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{Error, Result};

/// The whole authentication configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds; capped at 30.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Longest lifetime (`exp` minus `iat`, or minus now without `iat`) a bearer token may have;
    /// longer ones are refused, whoever signed them.
    #[serde(default = "day", deserialize_with = "duration")]
    pub max_token_lifetime: Duration,
    /// The gateway's own tokens.
    pub gateway: GatewayTokenConfig,
    /// Users allowed to exchange Basic credentials for a gateway token in `Handshake`.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// External identity providers whose tokens are accepted.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Roles of TLS client certificate subjects (with `--tls-client-ca`).
    #[serde(default)]
    pub mtls_identities: Option<PathBuf>,
}

fn default_leeway() -> u64 {
    30
}

/// Tokens signed by the gateway (HS256).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTokenConfig {
    /// File holding the signing secret (at least 32 bytes).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// `iss` of gateway tokens.
    #[serde(default = "meshgate")]
    pub issuer: String,
    /// `aud` of gateway tokens.
    #[serde(default = "meshgate")]
    pub audience: String,
    /// Lifetime of a token from `Handshake`.
    #[serde(default = "hour", deserialize_with = "duration")]
    pub ttl: Duration,
    /// How long a session may last from the original authentication, however often its token
    /// is renewed with `Handshake`.
    #[serde(default = "twelve_hours", deserialize_with = "duration")]
    pub max_session: Duration,
}

fn day() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn twelve_hours() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn meshgate() -> String {
    "meshgate".into()
}
fn hour() -> Duration {
    Duration::from_secs(3600)
}
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    crate::config::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// One trusted identity provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (at least one).
    pub audiences: Vec<String>,
    /// Algorithms this issuer signs with; tokens with any other `alg` are refused.
    pub algorithms: Vec<Algorithm>,
    /// Public key (RSA, EC or Ed25519) in PEM.
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
    /// Environment variable with an HMAC secret (HS* algorithms only).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A JWKS document on disk; keys are selected by `kid`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document at an `https://` URL, fetched at start and again (at most every 30 s)
    /// when a token names an unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A PEM CA to trust (besides the system's) when fetching `jwks_url`.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// How claims map to principal fields.
    #[serde(default)]
    pub claims: ClaimNames,
}

/// Names of the claims that carry each principal field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    /// Roles (a string or a list).
    pub roles: String,
    /// Groups (a string or a list).
    pub groups: String,
    /// Home domain.
    pub domain: String,
    /// Purpose of use.
    pub purpose: String,
    /// Clearance.
    pub clearance: String,
    /// Further attributes: principal attribute name → claim name.
    pub attributes: BTreeMap<String, String>,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            roles: "roles".into(),
            groups: "groups".into(),
            domain: "domain".into(),
            purpose: "purpose".into(),
            clearance: "clearance".into(),
            attributes: BTreeMap::from([("region".to_string(), "region".to_string())]),
        }
    }
}

impl AuthConfig {
    /// Reads and checks a configuration file; relative paths in it become relative to its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut cfg: Self =
            serde_yaml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut Option<PathBuf>| {
            if let Some(x) = p.as_mut().filter(|x| x.is_relative()) {
                *x = base.join(&*x);
            }
        };
        rebase(&mut cfg.users_file);
        rebase(&mut cfg.mtls_identities);
        rebase(&mut cfg.gateway.secret_file);
        for i in &mut cfg.issuers {
            rebase(&mut i.pem_file);
            rebase(&mut i.jwks_file);
            rebase(&mut i.jwks_ca_file);
        }
        Ok(cfg)
    }

    /// The gateway token secret, from its file or variable.
    pub fn gateway_secret(&self) -> Result<Vec<u8>> {
        let g = &self.gateway;
        let secret = match (&g.secret_file, &g.secret_env) {
            (Some(f), None) => {
                std::fs::read(f).map_err(|e| Error::Config(format!("gateway.secret_file {}: {e}", f.display())))?
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| Error::Config(format!("gateway.secret_env: variable {var} is not set")))?
                .into_bytes(),
            _ => return Err(Error::Config("gateway: give exactly one of secret_file, secret_env".into())),
        };
        let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
        if secret.len() < 32 {
            return Err(Error::Config("the gateway token secret must be at least 32 bytes".into()));
        }
        Ok(secret)
    }
}
