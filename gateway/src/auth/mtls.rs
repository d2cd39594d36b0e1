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
use x509_cert::der::oid::AssociatedOid;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::users::User;
use super::{AuthMethod, Error, Principal, Result};

/// The first DNS name of the certificate's subjectAltName extension.
fn san_dns(cert: &Certificate) -> Option<String> {
    let ext = cert.tbs_certificate.extensions.as_ref()?.iter().find(|e| e.extn_id == SubjectAltName::OID)?;
    let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).ok()?;
    san.0.into_iter().find_map(|n| match n {
        GeneralName::DnsName(d) => Some(d.to_string()),
        _ => None,
    })
}

/// The commonName attribute of `name`, found by its OID in the parsed name (never by reading
/// the DN's text, where another attribute's value may contain `, CN=`). A name with several
/// CNs is refused: which one is meant would be a guess.
fn common_name(name: &x509_cert::name::Name) -> Result<Option<String>> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
    let unreadable = || Error::InvalidToken("the client certificate's commonName cannot be read".into());
    let mut found = None;
    for atv in name.0.iter().flat_map(|rdn| rdn.0.iter()) {
        if atv.oid != COMMON_NAME {
            continue;
        }
        let v = &atv.value;
        let text = v
            .decode_as::<Utf8StringRef<'_>>()
            .map(|s| s.to_string())
            .or_else(|_| v.decode_as::<PrintableStringRef<'_>>().map(|s| s.to_string()))
            .or_else(|_| v.decode_as::<Ia5StringRef<'_>>().map(|s| s.to_string()))
            .or_else(|_| v.decode_as::<TeletexStringRef<'_>>().map(|s| s.to_string()))
            .map_err(|_| unreadable())?;
        if found.replace(text).is_some() {
            return Err(Error::InvalidToken("the client certificate has more than one commonName".into()));
        }
    }
    Ok(found)
}

/// id-at-commonName (RFC 4519).
const COMMON_NAME: x509_cert::der::oid::ObjectIdentifier = x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");

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
        let subject = common_name(&cert.tbs_certificate.subject)?
            .filter(|s| !s.is_empty())
            .or_else(|| san_dns(&cert))
            .ok_or_else(|| Error::MissingClaim("certificate CN or DNS subjectAltName".into()))?;
        let issuer = common_name(&cert.tbs_certificate.issuer)?.unwrap_or_default();
        let id = self.identities.get(&subject).cloned().unwrap_or_default();
        Ok(id.principal(&subject, &format!("mtls:{issuer}"), AuthMethod::Mtls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate made by openssl, as DER.
    fn cert(subject: &str, san: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let (key, pem, der) = (dir.path().join("k"), dir.path().join("c.pem"), dir.path().join("c.der"));
        let run = |args: &[&str]| {
            assert!(std::process::Command::new("openssl").args(args).output().unwrap().status.success(), "{args:?}")
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            subject,
            "-addext",
            san,
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            pem.to_str().unwrap(),
        ]);
        run(&["x509", "-in", pem.to_str().unwrap(), "-outform", "DER", "-out", der.to_str().unwrap()]);
        std::fs::read(der).unwrap()
    }

    #[test]
    fn subject_from_cn_then_san() {
        let ids: CertIdentities = serde_yaml::from_str("identities:\n  svc: {roles: [analyst]}\n").unwrap();
        let p = ids.principal(&cert("/O=x/CN=svc", "subjectAltName=DNS:other")).unwrap();
        assert_eq!(
            (p.subject.as_str(), p.roles.as_slice(), p.method),
            ("svc", &["analyst".to_string()][..], AuthMethod::Mtls)
        );
        let p = ids.principal(&cert("/O=x", "subjectAltName=DNS:svc")).unwrap();
        assert_eq!(p.subject, "svc");
        let p = ids.principal(&cert("/O=x/CN=nobody", "subjectAltName=DNS:n")).unwrap();
        assert!(p.roles.is_empty(), "unmapped subjects get no roles");
        assert!(ids.principal(b"not a certificate").is_err());
    }

    #[test]
    fn a_cn_inside_another_attribute_is_not_the_subject() {
        let ids: CertIdentities =
            serde_yaml::from_str("identities:\n  reporting-service: {roles: [pii_reader]}\n").unwrap();
        let p = ids.principal(&cert("/CN=mallory/O=x, CN=reporting-service", "subjectAltName=DNS:m")).unwrap();
        assert_eq!(p.subject, "mallory");
        assert!(p.roles.is_empty(), "mallory gets none of reporting-service's roles");
        let p = ids.principal(&cert("/O=x, CN=reporting-service", "subjectAltName=DNS:m")).unwrap();
        assert_eq!(p.subject, "m", "no CN attribute: the DNS name, not text from the organisation");
        let two = ids.principal(&cert("/CN=a/CN=reporting-service", "subjectAltName=DNS:m"));
        assert!(two.is_err(), "two CNs are refused");
    }
}
