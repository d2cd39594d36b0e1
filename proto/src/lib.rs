//! meshgate's own protobuf messages.
//!
//! - [`v1::TicketClaims`]: what one Flight `DoGet` reads (a product read or a SQL statement,
//!   the product ports and contract versions it was planned against, shard, subject, expiry,
//!   generation).
//! - [`v1::SignedTicket`]: the claims' bytes and their HMAC, as carried in a Flight `Ticket`.
//! - [`v1::SessionClaims`]: a Flight SQL session's options, signed into the session cookie.
//! - [`flight`]: Arrow Flight's session messages (`SetSessionOptions`, `GetSessionOptions`,
//!   `CloseSession`), which arrow-flight does not generate.
//!
//! The `.proto` sources live in `proto/meshgate/v1/` and `proto/arrow/flight/protocol/`; `build.rs` compiles them with `protox`
//! (pure Rust), so building needs no `protoc`.

/// Version 1 of the gateway's messages.
#[allow(missing_docs, unreachable_pub)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/meshgate.v1.rs"));
}

/// Arrow Flight's session messages (package `arrow.flight.protocol`).
#[allow(missing_docs, unreachable_pub)]
pub mod flight {
    include!(concat!(env!("OUT_DIR"), "/arrow.flight.protocol.rs"));
}

#[cfg(test)]
mod tests {
    use super::v1::ticket_claims::Read;
    use super::v1::{PinnedFile, ProductRead, ResourceRead, SignedTicket, SqlStatement, TicketClaims};
    use prost::Message;

    /// Pins the wire format: tickets issued by one release must decode in the next.
    #[test]
    fn ticket_encoding_is_stable() {
        let claims = TicketClaims {
            version: 2,
            ticket_id: vec![1, 2],
            expires_at_ms: 7,
            subject: "alice".into(),
            shard_index: 1,
            shard_count: 2,
            issuer: String::new(),
            read: Some(Read::Product(ProductRead {
                domain: "sales".into(),
                product: "orders".into(),
                port: "v1".into(),
                columns: vec!["a".into()],
                filter: "a > 1".into(),
                limit: Some(5),
                version: None,
            })),
            resources: vec![ResourceRead {
                domain: "sales".into(),
                product: "orders".into(),
                port: "v1".into(),
                contract_version: "1.0.0".into(),
            }],
            generation: 3,
            shard_files: vec![],
            files_assigned: false,
            compression: String::new(),
            shard_key: vec![],
        };
        let bytes = claims.encode_to_vec();
        // Hand-checked: field 10 (expiry) is `50 07`, field 11 (subject) `5a 05 "alice"`, field
        // 15 (the product read) `7a 1f ...`, field 18 (generation) `90 01 03`.
        assert_eq!(
            hex(&bytes),
            "080212020102500 75a05616c696365600168027a1f0a0573616c657312066f726465727 31a027631220161\
             2a0561203e2031300 58a011a0a0573616c657312066f7264657273 1a0276312205312e302e3090 0103"
                .replace(' ', "")
        );
        assert_eq!(TicketClaims::decode(bytes.as_slice()).unwrap(), claims);
        let sql = TicketClaims {
            read: Some(Read::Sql(SqlStatement { query: "SELECT 1".into(), ..Default::default() })),
            ..Default::default()
        };
        assert_eq!(hex(&sql.encode_to_vec()), "82010a0a0853454c4543542031");
        // Field 7 of a product read (a pinned data version): `38 03`.
        let pinned = ProductRead { version: Some(3), ..Default::default() };
        assert_eq!(hex(&pinned.encode_to_vec()), "3803");
        // Field 19 (a shard's pinned files): `9a 01`, then each file's path, size and range.
        let shard = TicketClaims {
            shard_files: vec![PinnedFile { path: "p".into(), size: 3, range_start: Some(0), range_end: Some(5) }],
            ..Default::default()
        };
        assert_eq!(hex(&shard.encode_to_vec()), "9a01 09 0a0170 1003 1800 2005".replace(' ', ""));
        // Field 22 (a shard's key columns): `b2 01`, then each column name.
        let keyed = TicketClaims { shard_key: vec!["k".into()], ..Default::default() };
        assert_eq!(hex(&keyed.encode_to_vec()), "b201016b");
        let signed = SignedTicket { claims: vec![9], signature: vec![8] };
        assert_eq!(hex(&signed.encode_to_vec()), "0a01091201 08".replace(' ', ""));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
