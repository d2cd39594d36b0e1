//! Secrets by reference.
//!
//! A credential is never written in a manifest or a configuration file: the file names where it
//! is (`{env: VARIABLE}` or `{file: /run/secrets/name}`) and the gateway reads it when it opens
//! the store. A secret written in clear is refused at load, with the fix in the message.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::{Error, Result};

/// Where a secret is read from.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub enum SecretRef {
    /// An environment variable of the gateway's process.
    Env(String),
    /// A file (its content, trailing newline removed), e.g. a mounted secret.
    File(PathBuf),
}

/// Why a value in clear is refused; the same words wherever a secret is expected.
pub const CLEAR_SECRET: &str = "a secret is never written in a manifest or configuration file; \
     write where the gateway reads it: `{env: VARIABLE}` or `{file: /path/to/secret}`";

impl TryFrom<serde_json::Value> for SecretRef {
    type Error = String;

    fn try_from(v: serde_json::Value) -> std::result::Result<Self, String> {
        let serde_json::Value::Object(map) = v else {
            return Err(CLEAR_SECRET.to_string());
        };
        let one = "a secret reference has exactly one of `env: VARIABLE` or `file: /path`";
        let mut entries = map.into_iter();
        match (entries.next(), entries.next()) {
            (Some((k, serde_json::Value::String(v))), None) if !v.trim().is_empty() => match k.as_str() {
                "env" => Ok(SecretRef::Env(v)),
                "file" => Ok(SecretRef::File(PathBuf::from(v))),
                _ => Err(one.to_string()),
            },
            _ => Err(one.to_string()),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "env:{v}"),
            SecretRef::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

impl SecretRef {
    /// Reads the secret now. The error names the reference (never a value) and the fix.
    pub fn resolve(&self) -> Result<Secret> {
        let value = match self {
            SecretRef::Env(v) => std::env::var(v).map_err(|_| {
                Error::InvalidBinding(format!("secret variable `{v}` is not set in the gateway's environment"))
            })?,
            SecretRef::File(p) => std::fs::read_to_string(p).map_err(|e| {
                Error::InvalidBinding(format!("secret file `{}` cannot be read ({})", p.display(), e.kind()))
            })?,
        };
        let value = value.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            return Err(Error::InvalidBinding(format!("secret {self:?} is empty")));
        }
        Ok(Secret(value))
    }
}

/// A secret's value. Its `Debug` shows nothing, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl Secret {
    /// The value, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_only() {
        let r: SecretRef = serde_yaml::from_str("{env: MESHGATE_TEST_SECRET_A}").unwrap();
        assert_eq!(r, SecretRef::Env("MESHGATE_TEST_SECRET_A".into()));
        let r: SecretRef = serde_yaml::from_str("file: /run/secrets/x").unwrap();
        assert_eq!(r, SecretRef::File("/run/secrets/x".into()));
        for clear in ["hunter2", "12345", "true"] {
            let e = serde_yaml::from_str::<SecretRef>(clear).unwrap_err().to_string();
            assert!(e.contains("never written"), "{clear}: {e}");
            assert!(!e.contains(clear), "the value is not repeated: {e}");
        }
        for bad in ["{}", "{env: A, file: /b}", "{env: ''}", "{path: /x}"] {
            assert!(serde_yaml::from_str::<SecretRef>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolved_from_a_file_without_its_newline_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let s = SecretRef::File(path).resolve().unwrap();
        assert_eq!(s.expose(), "s3cr3t");
        assert!(!format!("{s:?}").contains("s3cr3t"));
        let e = SecretRef::Env("MESHGATE_TEST_SECRET_UNSET".into()).resolve().unwrap_err().to_string();
        assert!(e.contains("MESHGATE_TEST_SECRET_UNSET") && e.contains("not set"), "{e}");
        let e = SecretRef::File(dir.path().join("missing")).resolve().unwrap_err().to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }
}
