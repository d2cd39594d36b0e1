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
    max_session: Duration,
}

impl std::fmt::Debug for GatewayTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTokens").field("issuer", &self.issuer).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl GatewayTokens {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8], issuer: &str, audience: &str, ttl: Duration) -> Self {
        let key = EncodingKey::from_secret(secret);
        Self { key, issuer: issuer.into(), audience: audience.into(), ttl, max_session: ttl }
    }

    /// Caps sessions renewed with [`GatewayTokens::renew`] at `max_session` from the original
    /// authentication.
    pub fn with_max_session(mut self, max_session: Duration) -> Self {
        self.max_session = max_session;
        self
    }

    /// A token for `p`, who has just authenticated (a password, the command line), valid for
    /// `ttl` (the configured lifetime when `None`).
    pub fn issue(&self, p: &Principal, ttl: Option<Duration>) -> Result<String> {
        let now = now_secs();
        self.sign(p, now, now + ttl.unwrap_or(self.ttl).as_secs())
    }

    /// A fresh token for `p`, who authenticated earlier with a bearer token: it never outlives
    /// the credential presented, nor `max_session` after the original authentication, and it
    /// keeps the original issuer as part of the identity (an identity provider's `alice` stays
    /// that provider's `alice`, never the gateway's own).
    pub fn renew(&self, p: &Principal) -> Result<String> {
        let now = now_secs();
        let auth_time = if p.auth_time > 0 { p.auth_time } else { now };
        let mut exp = (now + self.ttl.as_secs()).min(auth_time + self.max_session.as_secs());
        if p.expires_at > 0 {
            exp = exp.min(p.expires_at);
        }
        if exp <= now {
            return Err(Error::Expired);
        }
        self.sign(&Principal { auth_time, ..p.clone() }, now, exp)
    }

    fn sign(&self, p: &Principal, now: u64, exp: u64) -> Result<String> {
        let mut claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": p.subject,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "auth_time": if p.auth_time > 0 { p.auth_time } else { now },
            "roles": p.roles,
            "groups": p.groups,
        });
        if p.issuer != self.issuer {
            claims[ORIGINAL_ISSUER] = json!(p.issuer);
        }
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

/// Claim of a gateway token naming the issuer that originally vouched for its subject. Read
/// only from tokens the gateway signed.
const ORIGINAL_ISSUER: &str = "meshgate_orig_iss";

/// Verifies credentials: bearer JWTs (any trusted issuer, the gateway included) and Basic users.
pub struct Authenticator {
    issuers: HashMap<String, Issuer>,
    leeway: u64,
    max_lifetime: Duration,
    cache: moka::sync::Cache<[u8; 32], Arc<Principal>>,
    cache_stats: crate::metrics::CacheStats,
    tokens: GatewayTokens,
    users: Users,
    users_file: Option<std::path::PathBuf>,
    certs: CertIdentities,
    /// Password checks in flight: argon2 is deliberately slow, so it runs off the async runtime
    /// and at most this many at once.
    hashing: Arc<tokio::sync::Semaphore>,
    /// Failed logins per `user:<name>` and `addr:<ip>` in the current window.
    failures: moka::sync::Cache<String, Arc<std::sync::atomic::AtomicU32>>,
}

/// Password checks running at once.
const CONCURRENT_HASHES: usize = 2;
/// Window over which failed logins are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Failed logins per user, and per source address, in one window before logins are refused.
const MAX_FAILURES_PER_USER: u32 = 5;
const MAX_FAILURES_PER_SOURCE: u32 = 20;

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
    crate::net::install_crypto_provider();
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
        if let Keys::Single(k) = &keys
            && k.algorithms.is_empty()
        {
            return Err(fail("none of `algorithms` fits the key's type".into()));
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
        let tokens = GatewayTokens::new(&secret, &g.issuer, &g.audience, g.ttl).with_max_session(g.max_session);
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
            max_lifetime: cfg.max_token_lifetime,
            cache: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(300)).build(),
            cache_stats: crate::metrics::CacheStats::default(),
            tokens,
            users,
            users_file: cfg.users_file.clone(),
            hashing: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HASHES)),
            failures: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(FAILURE_WINDOW).build(),
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

    /// The users as the users file says now (it is read again, so removed or disabled users
    /// take effect without a restart); the users loaded at start when there is no file.
    fn current_users(&self) -> Result<Users> {
        match &self.users_file {
            Some(f) => Users::load(f),
            None => Ok(self.users.clone()),
        }
    }

    /// Checks Basic credentials against the users file, off the async runtime and at most
    /// [`CONCURRENT_HASHES`] at a time. Failed logins are counted per user and per `source`;
    /// past the limit every attempt is refused for the rest of the window, without hashing.
    pub async fn verify_basic(
        &self,
        user: &str,
        password: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Principal> {
        let keys: Vec<(String, u32)> = std::iter::once((format!("user:{user}"), MAX_FAILURES_PER_USER))
            .chain(source.map(|a| (format!("addr:{a}"), MAX_FAILURES_PER_SOURCE)))
            .collect();
        let over = |k: &str, limit: u32| {
            self.failures.get(k).is_some_and(|n| n.load(std::sync::atomic::Ordering::Relaxed) >= limit)
        };
        if keys.iter().any(|(k, limit)| over(k, *limit)) {
            return Err(Error::TooManyAttempts(FAILURE_WINDOW.as_secs()));
        }
        let permit =
            Arc::clone(&self.hashing).acquire_owned().await.map_err(|_| Error::Config("shutting down".into()))?;
        // Checked again: attempts that queued behind a flood are refused without hashing.
        if keys.iter().any(|(k, limit)| over(k, *limit)) {
            return Err(Error::TooManyAttempts(FAILURE_WINDOW.as_secs()));
        }
        let users = self.current_users()?;
        let (user_owned, password, issuer) = (user.to_string(), password.to_string(), self.tokens.issuer.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            users.verify(&user_owned, &password, &issuer)
        })
        .await
        .map_err(|e| Error::Config(format!("password check failed: {e}")))?;
        match checked {
            Ok(mut p) => {
                p.auth_time = now_secs();
                Ok(p)
            }
            Err(e) => {
                for (k, _) in &keys {
                    self.failures
                        .get_with(k.clone(), || Arc::new(std::sync::atomic::AtomicU32::new(0)))
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    /// A renewed gateway token for `p`, who called `Handshake` with a bearer token. A user of
    /// the gateway's own users file must still be there and enabled.
    pub fn renew(&self, p: &Principal) -> Result<String> {
        if p.issuer == self.tokens.issuer && p.method == AuthMethod::Bearer {
            let users = self.current_users()?;
            match users.users.get(&p.subject) {
                Some(u) if !u.disabled => {}
                _ => return Err(Error::SessionEnded),
            }
        }
        self.tokens.renew(p)
    }

    /// Hits and misses of the verified-token cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.cache_stats.get()
    }

    /// Verifies a bearer token and returns its principal.
    pub async fn verify_bearer(&self, token: &str) -> Result<Arc<Principal>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.cache.get(&digest) {
            if p.expires_at > now_secs() {
                self.cache_stats.hit();
                return Ok(p);
            }
            self.cache.invalidate(&digest);
        }
        self.cache_stats.miss();
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
        let c = &claims.claims;
        let iat = c.get("iat").and_then(Value::as_u64).unwrap_or_else(now_secs);
        let exp = c.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if exp.saturating_sub(iat) > self.max_lifetime.as_secs() {
            return Err(Error::LifetimeTooLong(self.max_lifetime.as_secs()));
        }
        let mut principal = principal_from(iss, c, &issuer.claims)?;
        principal.auth_time = c.get("auth_time").and_then(Value::as_u64).unwrap_or(iat);
        if iss == self.tokens.issuer
            && let Some(original) = c.get(ORIGINAL_ISSUER).and_then(Value::as_str)
        {
            principal.issuer = original.to_string();
        }
        let p = Arc::new(principal);
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
        auth_time: 0,
        bearer: None,
    })
}
