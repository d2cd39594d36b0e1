//! The users file: Basic credentials that `Handshake` exchanges for a gateway token.
//!
//! ```yaml
//! users:
//!   alice:
//!     password_hash: "$argon2id$v=19$m=19456,t=2,p=1$..."   # `meshgate users add`
//!     roles: [analyst]
//!     attributes: {region: EMEA}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use serde::{Deserialize, Serialize};

use super::{AuthMethod, Error, Principal, Result};

/// One user: a password (for Basic) and what the user is granted. The mTLS identities file uses
/// the same shape without passwords.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// argon2 PHC string; empty for identities that never log in with a password.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password_hash: String,
    /// Roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Home domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Purpose of use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Clearance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clearance: Option<String>,
    /// Further attributes (e.g. `region`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// A disabled user cannot log in, and its sessions are not renewed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl User {
    /// The principal of this user under `subject`, vouched for by `issuer`.
    pub fn principal(&self, subject: &str, issuer: &str, method: AuthMethod) -> Principal {
        Principal {
            subject: subject.to_string(),
            issuer: issuer.to_string(),
            method,
            roles: self.roles.clone(),
            groups: self.groups.clone(),
            domain: self.domain.clone(),
            purpose: self.purpose.clone(),
            clearance: self.clearance.clone(),
            attributes: self.attributes.clone(),
            expires_at: 0,
            auth_time: 0,
            bearer: None,
        }
    }
}

/// The users file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// Users by name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
}

/// A hash that costs as much to check as a real one, so unknown users take as long as known ones.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Nf5a8qC2iSuEbrZyVo0mXqz1VbGGuFZ0cSbq4m9hNqo";

impl Users {
    /// Reads a users file (a missing file is an error).
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("users_file {}: {e}", path.display())))?;
        serde_yaml::from_str(&text).map_err(|e| Error::Config(format!("users_file {}: {e}", path.display())))
    }

    /// Writes the users file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, serde_yaml::to_string(self).map_err(std::io::Error::other)?)
    }

    /// Hashes `password` with argon2id and a random salt.
    pub fn hash(password: &str) -> String {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashes any input").to_string()
    }

    /// Checks a user's password; returns the user's principal.
    pub fn verify(&self, name: &str, password: &str, issuer: &str) -> Result<Principal> {
        let user = self.users.get(name);
        let hash = user.map_or(DUMMY_HASH, |u| u.password_hash.as_str());
        let parsed = PasswordHash::new(hash).map_err(|_| Error::BadCredentials)?;
        let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        match (ok, user) {
            (true, Some(u)) if !u.disabled => Ok(u.principal(name, issuer, AuthMethod::Bearer)),
            _ => Err(Error::BadCredentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        let mut users = Users::default();
        users.users.insert(
            "alice".into(),
            User { password_hash: Users::hash("s3cret"), roles: vec!["analyst".into()], ..User::default() },
        );
        assert_eq!(users.verify("alice", "s3cret", "meshgate").unwrap().roles, ["analyst"]);
        assert_eq!(users.verify("alice", "wrong", "meshgate"), Err(Error::BadCredentials));
        assert_eq!(users.verify("mallory", "s3cret", "meshgate"), Err(Error::BadCredentials));
    }
}
