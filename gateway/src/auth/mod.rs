//! Authentication: who is calling.
//!
//! Every RPC passes the [`layer::AuthLayer`] before any handler runs; it turns the call's
//! credentials into a [`Principal`] in the request's extensions or answers `UNAUTHENTICATED`
//! itself. Deny by default: no credentials, no data and no metadata.
//!
//! - [`config`]: trusted issuers, gateway tokens, users file, mTLS (YAML, `--auth FILE`).
//! - [`jwt`]: bearer JWT validation with pinned algorithms per key, JWKS with cached keys.
//! - [`users`]: the Basic users file (argon2 hashes) used by `Handshake`.
//! - [`layer`]: the tower layer applying all of it to every call.
//!
//! Authorization (what the principal may do) is decided elsewhere, at the plan.

use std::collections::BTreeMap;

use serde::Serialize;

pub mod config;
pub mod jwt;
pub mod layer;
pub mod mtls;
pub mod users;

pub use config::AuthConfig;
pub use jwt::{Authenticator, GatewayTokens};

/// Result with the authentication [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A bearer JWT from a trusted issuer (or the gateway's own, from `Handshake`).
    Bearer,
    /// A verified TLS client certificate.
    Mtls,
    /// Authentication is switched off (`--insecure-no-auth`, loopback only).
    Anonymous,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// Subject (`sub`, or the certificate's CN/SAN).
    pub subject: String,
    /// Issuer that vouched for the subject.
    pub issuer: String,
    /// How the caller authenticated.
    pub method: AuthMethod,
    /// Roles.
    pub roles: Vec<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Home domain of the caller, if any.
    pub domain: Option<String>,
    /// Declared purpose of use.
    pub purpose: Option<String>,
    /// Clearance level (e.g. `restricted`).
    pub clearance: Option<String>,
    /// Further attributes mapped from claims (e.g. `region`), usable in row filters.
    pub attributes: BTreeMap<String, String>,
    /// Expiry of the credential, seconds since the epoch (0 when it does not expire).
    #[serde(skip)]
    pub expires_at: u64,
    /// When the caller originally authenticated (password, certificate or identity provider),
    /// seconds since the epoch; a renewed gateway token carries it on, so a session cannot be
    /// stretched by renewing (0 when unknown).
    #[serde(skip)]
    pub auth_time: u64,
    /// The bearer token this call presented, for products that forward the caller's identity to
    /// another gateway (never serialized, never printed).
    #[serde(skip)]
    pub bearer: Option<meshgate_adapters::secret::Secret>,
}

impl Principal {
    /// The principal used when authentication is switched off.
    pub fn anonymous() -> Self {
        Self {
            subject: "anonymous".into(),
            issuer: "meshgate".into(),
            method: AuthMethod::Anonymous,
            roles: vec![],
            groups: vec![],
            domain: None,
            purpose: None,
            clearance: None,
            attributes: BTreeMap::new(),
            expires_at: 0,
            auth_time: 0,
            bearer: None,
        }
    }
}

/// Why a caller was not authenticated. Messages say what to fix without revealing which check
/// of a signature failed beyond what the caller can already know.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No credentials at all.
    #[error(
        "authentication required: send `authorization: Bearer <JWT>` (get one with Handshake and Basic credentials)"
    )]
    Missing,
    /// The authorization header is not `Bearer <token>` or `Basic <credentials>`.
    #[error("the authorization header must be `Bearer <JWT>`")]
    BadHeader,
    /// The token is not a JWT this gateway accepts (malformed, `alg` not allowed, bad signature).
    #[error("the token is not valid: {0}")]
    InvalidToken(String),
    /// Signed by an issuer this gateway does not trust.
    #[error("the token's issuer is not trusted here")]
    UntrustedIssuer,
    /// The token names a key id the issuer does not publish.
    #[error("the token's key id is unknown to its issuer")]
    UnknownKey,
    /// Past `exp`.
    #[error("the token expired; get a new one")]
    Expired,
    /// Before `nbf`.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// A required claim is missing or has the wrong type.
    #[error("the token lacks a valid `{0}` claim")]
    MissingClaim(String),
    /// `aud` does not name this gateway.
    #[error("the token is not meant for this gateway (aud)")]
    WrongAudience,
    /// Basic credentials that do not match the users file.
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// Too many failed logins for this user or from this address.
    #[error("too many failed logins; wait {0} seconds before trying again")]
    TooManyAttempts(u64),
    /// The token is valid for longer than the gateway accepts.
    #[error("the token's lifetime exceeds the gateway's maximum of {0} seconds; ask for a shorter-lived token")]
    LifetimeTooLong(u64),
    /// A session cannot be renewed (its user is gone or disabled).
    #[error("the session cannot be renewed; log in again")]
    SessionEnded,
    /// The configuration cannot be used; raised at start-up.
    #[error("authentication configuration: {0}")]
    Config(String),
}

/// What a caller is told about a refused token: one message, whatever the check that failed,
/// so an outsider cannot probe which issuers, key ids or algorithms are trusted. The precise
/// reason goes to the log and the audit record.
pub const REFUSED_TOKEN: &str =
    "the token is not valid for this gateway; get a new one from your identity provider or with Handshake";

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(_) => tonic::Status::internal("authentication is misconfigured"),
            Error::InvalidToken(_)
            | Error::UntrustedIssuer
            | Error::UnknownKey
            | Error::NotYetValid
            | Error::MissingClaim(_)
            | Error::WrongAudience => tonic::Status::unauthenticated(REFUSED_TOKEN),
            Error::Missing
            | Error::BadHeader
            | Error::Expired
            | Error::BadCredentials
            | Error::LifetimeTooLong(_)
            | Error::SessionEnded => tonic::Status::unauthenticated(e.to_string()),
            Error::TooManyAttempts(_) => tonic::Status::resource_exhausted(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        for e in [Error::Missing, Error::Expired, Error::UnknownKey, Error::WrongAudience, Error::BadCredentials] {
            assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unauthenticated);
        }
        assert_eq!(tonic::Status::from(Error::Config("x".into())).code(), tonic::Code::Internal);
        assert_eq!(tonic::Status::from(Error::TooManyAttempts(9)).code(), tonic::Code::ResourceExhausted);
        let probes = [Error::UntrustedIssuer, Error::UnknownKey, Error::InvalidToken("InvalidAlgorithm".into())];
        for e in probes {
            assert_eq!(tonic::Status::from(e).message(), REFUSED_TOKEN, "refusals look alike");
        }
    }
}
