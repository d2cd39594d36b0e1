//! Signed, stateless tickets.
//!
//! `GetFlightInfo` plans a read and hands out one ticket per endpoint; `DoGet` may run on any
//! replica that shares the key. A ticket is a protobuf [`TicketClaims`] (the read: a product
//! read or a SQL statement; the product ports and contract versions it was planned against,
//! shard, subject, expiry, generation) followed by an
//! HMAC-SHA256 over a domain-separation prefix and the claims' exact bytes. Verification is
//! constant-time; nothing in a ticket is trusted before its signature checks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use meshgate_proto::v1::{SessionClaims, SignedTicket, TicketClaims};
use prost::Message;
use sha2::Sha256;

/// Result with the tickets' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Claims format version this gateway writes and reads.
pub const CLAIMS_VERSION: u32 = 2;
const CONTEXT: &[u8] = b"meshgate.ticket.v1\0";
/// Prefix of session cookies' MACs, so a ticket is never taken for a session or back.
const SESSION_CONTEXT: &[u8] = b"meshgate.session.v1\0";
/// Shortest accepted key.
pub const MIN_KEY_LEN: usize = 32;

/// Why a ticket was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The bytes are not a meshgate ticket (truncated, not protobuf, empty).
    #[error("the ticket is malformed; use a ticket from GetFlightInfo as it was returned")]
    Malformed,
    /// The signature does not match: tampered, or issued by a gateway with another key.
    #[error("the ticket's signature is not valid; get a new ticket from GetFlightInfo")]
    BadSignature,
    /// The ticket is past its expiry.
    #[error("the ticket expired; call GetFlightInfo again for a fresh one")]
    Expired,
    /// Written by a gateway version this one does not understand.
    #[error("the ticket has format version {0}, which this gateway does not read; call GetFlightInfo again")]
    UnsupportedVersion(u32),
    /// The key given in configuration is unusable.
    #[error("the ticket key must be at least {MIN_KEY_LEN} bytes (hex or base64 encoded); got {0}")]
    WeakKey(usize),
}

/// Signs and verifies tickets with one key.
#[derive(Clone)]
pub struct TicketSigner {
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigner").field("key", &"<redacted>").field("ttl", &self.ttl).finish()
    }
}

impl TicketSigner {
    /// A signer with `key` (at least [`MIN_KEY_LEN`] bytes); tickets live for `ttl`.
    pub fn try_new(key: Vec<u8>, ttl: Duration) -> Result<Self> {
        if key.len() < MIN_KEY_LEN {
            return Err(Error::WeakKey(key.len()));
        }
        Ok(Self { key, ttl })
    }

    /// A signer with a random key: tickets are only valid on this process.
    pub fn random(ttl: Duration) -> Self {
        let key: [u8; 32] = rand::random();
        Self { key: key.to_vec(), ttl }
    }

    /// Decodes a key given as hex or base64.
    pub fn decode_key(text: &str) -> Result<Vec<u8>> {
        use base64::Engine;
        let t = text.trim();
        let key = hex::decode(t)
            .ok()
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(t).ok())
            .unwrap_or_else(|| t.as_bytes().to_vec());
        if key.len() < MIN_KEY_LEN {
            return Err(Error::WeakKey(key.len()));
        }
        Ok(key)
    }

    /// How long tickets live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn mac(&self, context: &[u8], claims: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(context);
        mac.update(claims);
        mac
    }

    fn seal(&self, context: &[u8], claims: Vec<u8>) -> Vec<u8> {
        let signature = self.mac(context, &claims).finalize().into_bytes().to_vec();
        SignedTicket { claims, signature }.encode_to_vec()
    }

    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let signed = SignedTicket::decode(sealed).map_err(|_| Error::Malformed)?;
        if signed.claims.is_empty() || signed.signature.len() != 32 {
            return Err(Error::Malformed);
        }
        self.mac(context, &signed.claims).verify_slice(&signed.signature).map_err(|_| Error::BadSignature)?;
        Ok(signed.claims)
    }

    /// Signs a session's claims (they do not expire: a session only holds preferences, and
    /// every call still authenticates its caller).
    pub fn sign_session(&self, claims: &SessionClaims) -> Vec<u8> {
        self.seal(SESSION_CONTEXT, claims.encode_to_vec())
    }

    /// Checks a session's signature and returns its claims.
    pub fn verify_session(&self, sealed: &[u8]) -> Result<SessionClaims> {
        SessionClaims::decode(self.open(SESSION_CONTEXT, sealed)?.as_slice()).map_err(|_| Error::Malformed)
    }

    /// Fills in version, id and expiry (from `now`), then signs.
    pub fn sign(&self, mut claims: TicketClaims, now: SystemTime) -> Vec<u8> {
        claims.version = CLAIMS_VERSION;
        if claims.ticket_id.is_empty() {
            claims.ticket_id = uuid::Uuid::new_v4().as_bytes().to_vec();
        }
        claims.expires_at_ms = millis(now + self.ttl);
        self.seal(CONTEXT, claims.encode_to_vec())
    }

    /// Checks the signature, then the version and expiry (against `now`), and returns the claims.
    pub fn verify(&self, ticket: &[u8], now: SystemTime) -> Result<TicketClaims> {
        let bytes = self.open(CONTEXT, ticket)?;
        let claims = TicketClaims::decode(bytes.as_slice()).map_err(|_| Error::Malformed)?;
        if claims.version != CLAIMS_VERSION {
            return Err(Error::UnsupportedVersion(claims.version));
        }
        if claims.expires_at_ms <= millis(now) {
            return Err(Error::Expired);
        }
        Ok(claims)
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TicketClaims {
        use meshgate_proto::v1::ProductRead;
        use meshgate_proto::v1::ticket_claims::Read;
        let read = ProductRead { domain: "sales".into(), product: "orders".into(), ..Default::default() };
        TicketClaims { read: Some(Read::Product(read)), ..Default::default() }
    }

    #[test]
    fn round_trip_and_attacks() {
        let now = SystemTime::now();
        let s = TicketSigner::try_new(vec![7; 32], Duration::from_secs(60)).unwrap();
        let t = s.sign(claims(), now);
        let c = s.verify(&t, now).unwrap();
        assert_eq!((&c.read, c.version), (&claims().read, CLAIMS_VERSION));

        // Every single flipped bit is refused.
        for i in 0..t.len() * 8 {
            let mut bad = t.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(s.verify(&bad, now).is_err(), "bit {i} flipped was accepted");
        }
        // Every truncation is refused.
        for n in 0..t.len() {
            assert!(s.verify(&t[..n], now).is_err(), "truncated to {n} was accepted");
        }
        assert_eq!(s.verify(&t, now + Duration::from_secs(61)), Err(Error::Expired));
        let other = TicketSigner::try_new(vec![8; 32], Duration::from_secs(60)).unwrap();
        assert_eq!(other.verify(&t, now), Err(Error::BadSignature));
    }

    /// A ticket of the previous format, validly signed, is refused by version, not misread.
    #[test]
    fn older_formats_are_refused() {
        let now = SystemTime::now();
        let s = TicketSigner::try_new(vec![7; 32], Duration::from_secs(60)).unwrap();
        let old = TicketClaims { version: 1, expires_at_ms: millis(now) + 60_000, ..Default::default() };
        let signed = s.seal(CONTEXT, old.encode_to_vec());
        assert_eq!(s.verify(&signed, now), Err(Error::UnsupportedVersion(1)));
    }

    /// A session cookie is not a ticket and a ticket is not a session, even with one key.
    #[test]
    fn sessions_and_tickets_do_not_mix() {
        let now = SystemTime::now();
        let s = TicketSigner::try_new(vec![7; 32], Duration::from_secs(60)).unwrap();
        let session = SessionClaims { subject: "alice".into(), schema: "sales".into(), ..Default::default() };
        let cookie = s.sign_session(&session);
        assert_eq!(s.verify_session(&cookie).unwrap(), session);
        assert_eq!(s.verify(&cookie, now), Err(Error::BadSignature));
        assert_eq!(s.verify_session(&s.sign(claims(), now)), Err(Error::BadSignature));
        let mut bad = cookie.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(s.verify_session(&bad), Err(Error::BadSignature));
    }

    #[test]
    fn keys() {
        assert_eq!(TicketSigner::decode_key("00ff").unwrap_err(), Error::WeakKey(2));
        assert_eq!(TicketSigner::decode_key(&"ab".repeat(32)).unwrap().len(), 32);
        assert!(TicketSigner::try_new(vec![0; 31], Duration::from_secs(1)).is_err());
    }
}
