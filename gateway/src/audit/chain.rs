//! The hash chain: each record carries its sequence number, the previous record's hash and its
//! own SHA-256 over a canonical encoding (JSON with sorted keys, without the `hash` field).

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Hash of a record given as JSON; its `hash` field, if any, is left out. Records hold no
/// floats, so parsing and re-encoding a line gives back the bytes that were hashed.
pub fn hash_of(record: &Value) -> String {
    let mut r = record.clone();
    if let Some(m) = r.as_object_mut() {
        m.remove("hash");
    }
    // serde_json's maps are ordered by key, so this is canonical.
    hex::encode(Sha256::digest(r.to_string().as_bytes()))
}

/// A chain being walked record by record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// Sequence number the next record must carry.
    pub seq: u64,
    /// Hash the next record's `prev_hash` must carry.
    pub prev: String,
}

impl Walk {
    /// The start of a log.
    pub fn genesis() -> Self {
        Self { seq: 0, prev: GENESIS.to_string() }
    }

    /// Checks one line (with its line end) against the chain and advances past it; returns the
    /// parsed record.
    pub fn push(&mut self, line: &str) -> Result<Value, String> {
        if !line.ends_with('\n') {
            return Err("the record is cut short (no line end): the file was truncated".into());
        }
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not a JSON record: {e}"))?;
        let got_seq = v.get("seq").and_then(Value::as_u64).ok_or("no `seq`")?;
        if got_seq != self.seq {
            return Err(format!(
                "sequence {got_seq} where {} was expected: a record was deleted or reordered",
                self.seq
            ));
        }
        if v.get("prev_hash").and_then(Value::as_str) != Some(self.prev.as_str()) {
            return Err(
                "`prev_hash` does not match the previous record: a record was deleted, reordered or changed".into()
            );
        }
        let hash = hash_of(&v);
        if v.get("hash").and_then(Value::as_str) != Some(hash.as_str()) {
            return Err("the record's content does not match its hash: it was modified".into());
        }
        self.seq += 1;
        self.prev = hash;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The first broken line (1-based) and why, or the chain's (records, last hash).
    fn verify(text: &str) -> Result<(u64, String), (usize, String)> {
        let mut walk = Walk::genesis();
        for (i, line) in text.split_inclusive('\n').enumerate() {
            walk.push(line).map_err(|reason| (i + 1, reason))?;
        }
        Ok((walk.seq, walk.prev))
    }

    fn chain(n: u64) -> String {
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for seq in 0..n {
            let mut r = json!({"seq": seq, "prev_hash": prev, "event": format!("e{seq}")});
            let h = hash_of(&r);
            r["hash"] = json!(h.clone());
            out.push_str(&r.to_string());
            out.push('\n');
            prev = h;
        }
        out
    }

    #[test]
    fn detects_every_kind_of_tampering() {
        let good = chain(4);
        assert_eq!(verify(&good).unwrap().0, 4);
        let lines: Vec<&str> = good.lines().collect();
        let modified = good.replace("\"e2\"", "\"e9\"");
        assert_eq!(verify(&modified).unwrap_err().0, 3);
        let deleted = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        assert_eq!(verify(&deleted).unwrap_err().0, 2);
        let reordered = format!("{}\n{}\n{}\n{}\n", lines[0], lines[2], lines[1], lines[3]);
        assert_eq!(verify(&reordered).unwrap_err().0, 2);
        let truncated = &good[..good.len() - 10];
        assert_eq!(verify(truncated).unwrap_err().0, 4);
    }
}
