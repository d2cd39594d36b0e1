//! Verified TLS client certificates as identities.
//!
//! With `--tls-client-ca`, the TLS handshake verifies client certificates against that CA
//! (certificates from any other CA are refused before a single RPC runs). A verified
//! certificate is an identity: the subject is the certificate's CN, and roles and attributes come
//! from the mapping file named by `mtls_identities` in the authentication configuration:
//!
//! ```yaml
//! identities:
//!   reporting-service: {roles: [analyst], attributes: {region: EMEA}}
//! ```
//!
//! A subject that is not in the file is authenticated but has no roles, so policies give it
//! nothing beyond what they give everyone.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use x509_cert::Certificate;
use x509_cert::der::Decode;

use super::users::User;
use super::{AuthMethod, Error, Principal, Result};

/// The mapping file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertIdentities {
    /// Identities by certificate subject (CN); any `password_hash` is ignored.
    #[serde(default)]
    pub identities: BTreeMap<String, User>,
}

impl CertIdentities {
    /// Reads the mapping file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("mtls_identities {}: {e}", path.display())))?;
        serde_yaml::from_str(&text).map_err(|e| Error::Config(format!("mtls_identities {}: {e}", path.display())))
    }

    /// The principal of a certificate the TLS layer already verified (DER).
    pub fn principal(&self, der: &[u8]) -> Result<Principal> {
        let cert = Certificate::from_der(der)
            .map_err(|_| Error::InvalidToken("the client certificate cannot be parsed".into()))?;
        let cn = |name: &x509_cert::name::Name| {
            name.to_string().split(',').find_map(|part| part.trim().strip_prefix("CN=").map(str::to_string))
        };
        let subject = cn(&cert.tbs_certificate.subject)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::MissingClaim("certificate CN".into()))?;
        let issuer = cn(&cert.tbs_certificate.issuer).unwrap_or_default();
        let id = self.identities.get(&subject).cloned().unwrap_or_default();
        Ok(id.principal(&subject, &format!("mtls:{issuer}"), AuthMethod::Mtls))
    }
}
