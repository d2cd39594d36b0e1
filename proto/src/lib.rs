//! meshgate's own protobuf messages.
//!
//! - [`v1::TicketClaims`]: what one Flight `DoGet` reads (product, port, contract version,
//!   projection, filter, limit, shard, subject, expiry).
//! - [`v1::SignedTicket`]: the claims' bytes and their HMAC, as carried in a Flight `Ticket`.
//!
//! The `.proto` sources live in `proto/meshgate/v1/`; `build.rs` compiles them with `protox`
//! (pure Rust), so building needs no `protoc`.

/// Version 1 of the gateway's messages.
#[allow(missing_docs, unreachable_pub)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/meshgate.v1.rs"));
}

#[cfg(test)]
mod tests {
    use super::v1::{SignedTicket, TicketClaims};
    use prost::Message;

    /// Pins the wire format: tickets issued by one release must decode in the next.
    #[test]
    fn ticket_encoding_is_stable() {
        let claims = TicketClaims {
            version: 1,
            ticket_id: vec![1, 2],
            domain: "sales".into(),
            product: "orders".into(),
            port: "v1".into(),
            contract_version: "1.0.0".into(),
            projection: vec!["a".into()],
            filter: "a > 1".into(),
            limit: Some(5),
            expires_at_ms: 7,
            subject: "alice".into(),
            shard_index: 1,
            shard_count: 2,
            issuer: String::new(),
        };
        let bytes = claims.encode_to_vec();
        // Hand-checked: field 10 (expiry) is `50 07`, field 11 (subject) `5a 05 "alice"`, ...
        assert_eq!(
            hex(&bytes),
            "0801120201021a0573616c657322066f72646572732a0276313205312e302e303a0161\
             420561203e2031480550075a05616c69636560016802"
        );
        assert_eq!(TicketClaims::decode(bytes.as_slice()).unwrap(), claims);
        let signed = SignedTicket { claims: vec![9], signature: vec![8] };
        assert_eq!(hex(&signed.encode_to_vec()), "0a01091201 08".replace(' ', ""));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
