//! Bearer JWT validation and the gateway's own tokens.
//!
//! For each trusted issuer the configuration pins the algorithms; every key carries the
//! algorithms it may verify, and the token header's `alg` must be one of them (it never chooses
//! the key type): an HS256 token "signed" with an issuer's RSA public key, or `alg: none`, is
//! refused. `jku`, `x5u` and embedded `jwk` headers are never followed. `exp`, `iss`, `aud` and
//! `sub` are required, `nbf` is checked, leeway is at most 30 s. Verified tokens are cached by a
//! hash of the token, never past their `exp`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::config::{AuthConfig, ClaimNames, IssuerConfig};
use super::mtls::CertIdentities;
use super::users::Users;
use super::{AuthMethod, Error, Principal, Result};

/// How long an unknown `kid` must wait before the JWKS is read again.
const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Where a JWKS document comes from.
enum JwksSource {
    File(PathBuf),
    Url { url: String, client: reqwest::Client },
}

impl JwksSource {
    fn name(&self) -> String {
        match self {
            JwksSource::File(f) => f.display().to_string(),
            JwksSource::Url { url, .. } => url.clone(),
        }
    }

    async fn read(&self, allowed: &[Algorithm]) -> Result<HashMap<String, Arc<Key>>> {
        let fail = |e: String| Error::Config(format!("JWKS {}: {e}", self.name()));
        let text = match self {
            JwksSource::File(f) => tokio::fs::read_to_string(f).await.map_err(|e| fail(e.to_string()))?,
            JwksSource::Url { url, client } => {
                let response = client.get(url).send().await.map_err(|e| fail(e.to_string()))?;
                let response = response.error_for_status().map_err(|e| fail(e.to_string()))?;
                response.text().await.map_err(|e| fail(e.to_string()))?
            }
        };
        parse_jwks(&text, allowed).map_err(|e| fail(e.to_string()))
    }
}

enum Keys {
    Single(Arc<Key>),
    Jwks {
        source: JwksSource,
        allowed: Vec<Algorithm>,
        keys: moka::sync::Cache<String, Arc<Key>>,
        last_read: Mutex<Instant>,
    },
}

struct Issuer {
    audiences: Vec<String>,
    claims: ClaimNames,
    keys: Keys,
}

/// Signs the gateway's own tokens (HS256), issued by `Handshake` and `meshgate token issue`.
#[derive(Clone)]
pub struct GatewayTokens {
    key: EncodingKey,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for GatewayTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTokens").field("issuer", &self.issuer).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl GatewayTokens {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8], issuer: &str, audience: &str, ttl: Duration) -> Self {
        Self { key: EncodingKey::from_secret(secret), issuer: issuer.into(), audience: audience.into(), ttl }
    }

    /// A token for `p`, valid for `ttl` (the configured lifetime when `None`).
    pub fn issue(&self, p: &Principal, ttl: Option<Duration>) -> Result<String> {
        let now = now_secs();
        let mut claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": p.subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.unwrap_or(self.ttl).as_secs(),
            "roles": p.roles,
            "groups": p.groups,
        });
        for (k, v) in [("domain", &p.domain), ("purpose", &p.purpose), ("clearance", &p.clearance)] {
            if let Some(v) = v {
                claims[k] = json!(v);
            }
        }
        for (k, v) in &p.attributes {
            claims[k] = json!(v);
        }
        encode(&Header::new(Algorithm::HS256), &claims, &self.key).map_err(|e| Error::Config(e.to_string()))
    }
}

/// Verifies credentials: bearer JWTs (any trusted issuer, the gateway included) and Basic users.
pub struct Authenticator {
    issuers: HashMap<String, Issuer>,
    leeway: u64,
    cache: moka::sync::Cache<[u8; 32], Arc<Principal>>,
    tokens: GatewayTokens,
    users: Users,
    certs: CertIdentities,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn family_algorithms(key: &DecodingKey, allowed: &[Algorithm]) -> Vec<Algorithm> {
    allowed.iter().copied().filter(|a| a.family() == key.family()).collect()
}

fn parse_jwks(text: &str, allowed: &[Algorithm]) -> std::result::Result<HashMap<String, Arc<Key>>, serde_json::Error> {
    let set: JwkSet = serde_json::from_str(text)?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let (Some(kid), Ok(decoding)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) else {
            tracing::warn!("skipping a JWKS key without kid or of an unsupported type");
            continue;
        };
        // The key's own `alg`, if it declares one, narrows the issuer's algorithms further.
        let mut algorithms = family_algorithms(&decoding, allowed);
        if let Some(alg) = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok()) {
            algorithms.retain(|a| *a == alg);
        }
        if !algorithms.is_empty() {
            keys.insert(kid, Arc::new(Key { decoding, algorithms }));
        }
    }
    Ok(keys)
}

/// An HTTPS client for JWKS documents; `ca` adds a private root to the system's.
fn https_client(ca: Option<&PathBuf>) -> Result<reqwest::Client> {
    // rustls needs a process-wide crypto provider; ring is the one tonic's TLS uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().https_only(true).timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| Error::Config(format!("jwks_ca_file {}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| Error::Config(format!("jwks_ca_file {}: {e}", ca.display())))?;
        builder = builder.tls_certs_merge([cert]);
    }
    builder.build().map_err(|e| Error::Config(format!("HTTPS client: {e}")))
}

impl Issuer {
    async fn from_config(c: &IssuerConfig) -> Result<Self> {
        let fail = |m: String| Error::Config(format!("issuer {}: {m}", c.issuer));
        if c.audiences.is_empty() || c.algorithms.is_empty() {
            return Err(fail("give at least one audience and one algorithm".into()));
        }
        let jwks = match (&c.jwks_file, &c.jwks_url) {
            (Some(f), None) => Some(JwksSource::File(f.clone())),
            (None, Some(url)) if url.starts_with("https://") => {
                Some(JwksSource::Url { url: url.clone(), client: https_client(c.jwks_ca_file.as_ref())? })
            }
            (None, Some(_)) => return Err(fail("jwks_url must be an https:// URL".into())),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(fail("give jwks_file or jwks_url, not both".into())),
        };
        let keys = match (&c.pem_file, &c.secret_env, jwks) {
            (Some(pem), None, None) => {
                let bytes = std::fs::read(pem).map_err(|e| fail(format!("pem_file {}: {e}", pem.display())))?;
                let decoding = DecodingKey::from_rsa_pem(&bytes)
                    .or_else(|_| DecodingKey::from_ec_pem(&bytes))
                    .or_else(|_| DecodingKey::from_ed_pem(&bytes))
                    .map_err(|_| fail("pem_file is not an RSA, EC or Ed25519 public key".into()))?;
                Keys::Single(Arc::new(Key { algorithms: family_algorithms(&decoding, &c.algorithms), decoding }))
            }
            (None, Some(var), None) => {
                let secret = std::env::var(var).map_err(|_| fail(format!("variable {var} is not set")))?;
                if secret.len() < 32 {
                    return Err(fail("an HMAC secret must be at least 32 bytes".into()));
                }
                let decoding = DecodingKey::from_secret(secret.as_bytes());
                Keys::Single(Arc::new(Key { algorithms: family_algorithms(&decoding, &c.algorithms), decoding }))
            }
            (None, None, Some(source)) => Keys::Jwks {
                keys: {
                    let cache = moka::sync::Cache::new(1_000);
                    for (kid, key) in source.read(&c.algorithms).await? {
                        cache.insert(kid, key);
                    }
                    cache
                },
                source,
                allowed: c.algorithms.clone(),
                last_read: Mutex::new(Instant::now()),
            },
            _ => return Err(fail("give exactly one of pem_file, secret_env, jwks_file, jwks_url".into())),
        };
        if let Keys::Single(k) = &keys {
            if k.algorithms.is_empty() {
                return Err(fail("none of `algorithms` fits the key's type".into()));
            }
        }
        Ok(Self { audiences: c.audiences.clone(), claims: c.claims.clone(), keys })
    }

    async fn key(&self, kid: Option<&str>) -> Result<Arc<Key>> {
        match &self.keys {
            Keys::Single(k) => Ok(Arc::clone(k)),
            Keys::Jwks { source, allowed, keys, last_read } => {
                let kid = kid.ok_or(Error::UnknownKey)?;
                if let Some(k) = keys.get(kid) {
                    return Ok(k);
                }
                // One refresh per interval, however many unknown kids arrive: a flood of forged
                // kids cannot make the gateway hammer the key source.
                {
                    let mut last = last_read.lock().expect("jwks lock");
                    if last.elapsed() < JWKS_REFRESH_INTERVAL {
                        return Err(Error::UnknownKey);
                    }
                    *last = Instant::now();
                }
                match source.read(allowed).await {
                    Ok(fresh) => {
                        // Rotated-out keys go; the document is the truth.
                        keys.invalidate_all();
                        for (k, v) in fresh {
                            keys.insert(k, v);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "refreshing the JWKS failed; keeping the cached keys"),
                }
                keys.get(kid).ok_or(Error::UnknownKey)
            }
        }
    }
}

impl Authenticator {
    /// Builds the authenticator from configuration.
    pub async fn from_config(cfg: &AuthConfig) -> Result<Self> {
        let secret = cfg.gateway_secret()?;
        let g = &cfg.gateway;
        let tokens = GatewayTokens::new(&secret, &g.issuer, &g.audience, g.ttl);
        let mut issuers = HashMap::new();
        let gateway = Issuer {
            audiences: vec![g.audience.clone()],
            claims: ClaimNames::default(),
            keys: Keys::Single(Arc::new(Key {
                decoding: DecodingKey::from_secret(&secret),
                algorithms: vec![Algorithm::HS256],
            })),
        };
        issuers.insert(g.issuer.clone(), gateway);
        for c in &cfg.issuers {
            if issuers.insert(c.issuer.clone(), Issuer::from_config(c).await?).is_some() {
                return Err(Error::Config(format!("issuer {} is configured twice", c.issuer)));
            }
        }
        let users = match &cfg.users_file {
            Some(f) => Users::load(f)?,
            None => Users::default(),
        };
        let certs = match &cfg.mtls_identities {
            Some(f) => CertIdentities::load(f)?,
            None => CertIdentities::default(),
        };
        Ok(Self {
            certs,
            issuers,
            leeway: cfg.leeway_seconds.min(30),
            cache: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(300)).build(),
            tokens,
            users,
        })
    }

    /// The gateway's token signer.
    pub fn tokens(&self) -> &GatewayTokens {
        &self.tokens
    }

    /// The principal of a client certificate the TLS handshake verified (DER).
    pub fn verify_certificate(&self, der: &[u8]) -> Result<Principal> {
        self.certs.principal(der)
    }

    /// Checks Basic credentials against the users file.
    pub fn verify_basic(&self, user: &str, password: &str) -> Result<Principal> {
        self.users.verify(user, password, &self.tokens.issuer)
    }

    /// Verifies a bearer token and returns its principal.
    pub async fn verify_bearer(&self, token: &str) -> Result<Arc<Principal>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.cache.get(&digest) {
            if p.expires_at > now_secs() {
                return Ok(p);
            }
            self.cache.invalidate(&digest);
        }
        let header = decode_header(token).map_err(|e| Error::InvalidToken(e.to_string()))?;
        let unverified: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
            .map_err(|e| Error::InvalidToken(e.to_string()))?
            .claims;
        // `iss` is read unverified only to pick the keys; the signature check below covers it.
        let iss = unverified.get("iss").and_then(Value::as_str).ok_or_else(|| Error::MissingClaim("iss".into()))?;
        let issuer = self.issuers.get(iss).ok_or(Error::UntrustedIssuer)?;
        let key = issuer.key(header.kid.as_deref()).await?;
        let mut v = Validation::new(key.algorithms[0]);
        v.algorithms = key.algorithms.clone();
        v.set_issuer(&[iss]);
        v.set_audience(&issuer.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = self.leeway;
        let claims = decode::<Value>(token, &key.decoding, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => Error::Expired,
            ErrorKind::ImmatureSignature => Error::NotYetValid,
            ErrorKind::InvalidAudience => Error::WrongAudience,
            ErrorKind::InvalidIssuer => Error::UntrustedIssuer,
            ErrorKind::MissingRequiredClaim(c) => Error::MissingClaim(c.clone()),
            other => Error::InvalidToken(format!("{other:?}")),
        })?;
        let p = Arc::new(principal_from(iss, &claims.claims, &issuer.claims)?);
        self.cache.insert(digest, Arc::clone(&p));
        Ok(p)
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_string).collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => vec![],
    }
}

fn principal_from(iss: &str, c: &Value, names: &ClaimNames) -> Result<Principal> {
    let sub = c
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::MissingClaim("sub".into()))?;
    let text = |name: &str| c.get(name).and_then(Value::as_str).map(str::to_string);
    let attributes: BTreeMap<String, String> =
        names.attributes.iter().filter_map(|(attr, claim)| text(claim).map(|v| (attr.clone(), v))).collect();
    Ok(Principal {
        subject: sub.to_string(),
        issuer: iss.to_string(),
        method: AuthMethod::Bearer,
        roles: strings(c.get(&names.roles)),
        groups: strings(c.get(&names.groups)),
        domain: text(&names.domain),
        purpose: text(&names.purpose),
        clearance: text(&names.clearance),
        attributes,
        expires_at: c.get("exp").and_then(Value::as_u64).unwrap_or(0),
    })
}
