//! A contract's service levels (ODCS `slaProperties`) and the freshness meshgate measures
//! against them.
//!
//! The age limit of a port's data comes from the first of `freshness`, `latency` and
//! `frequency` the contract declares (value and unit: `1` `d`, `4` `h`, ...). Other properties
//! (`availability`, `retention`, ...) are shown as declared.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// SLA properties whose value bounds the age of the data, in the order they are looked for.
pub const AGE_PROPERTIES: &[&str] = &["freshness", "latency", "frequency"];

/// The age limit a contract promises, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeLimit {
    /// The SLA property it comes from (`freshness`, `latency`, `frequency`).
    pub property: String,
    /// The declared value, as written (`1 d`).
    pub declared: String,
    /// The limit.
    pub limit: Duration,
}

/// `slaProperties` → the age limit, or the problems as `(field, message)`.
pub fn age_limit(contract: &Value) -> Result<Option<AgeLimit>, Vec<(String, String)>> {
    let list = contract.get("slaProperties").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let Some(name) = p.get("property").and_then(Value::as_str) else { continue };
        let Some(rank) = AGE_PROPERTIES.iter().position(|k| *k == name) else { continue };
        match duration(p.get("value").unwrap_or(&Value::Null), p.get("unit").and_then(Value::as_str)) {
            Ok((limit, declared)) => found.push((rank, AgeLimit { property: name.to_string(), declared, limit })),
            Err(m) => problems.push((format!("slaProperties[{i}]"), m)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    found.sort_by_key(|(rank, _)| *rank);
    Ok(found.into_iter().next().map(|(_, a)| a))
}

fn duration(value: &Value, unit: Option<&str>) -> Result<(Duration, String), String> {
    if let (Value::String(s), None) = (value, unit) {
        return humantime::parse_duration(s)
            .map(|d| (d, s.clone()))
            .map_err(|_| format!("value `{s}` is not a duration; give a number and a `unit` (s, m, h, d, w, y)"));
    }
    let n = value.as_f64().filter(|n| *n > 0.0).ok_or_else(|| {
        format!("value `{value}` is not a positive number; give a number and a `unit` (s, m, h, d, w, y)")
    })?;
    let unit = unit.ok_or("has no `unit`; give one of s, m, h, d, w, y")?;
    let seconds = match unit.to_ascii_lowercase().as_str() {
        "s" | "sec" | "second" | "seconds" => 1.0,
        "m" | "min" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        "w" | "week" | "weeks" => 7.0 * 86_400.0,
        "y" | "yr" | "year" | "years" => 365.0 * 86_400.0,
        other => return Err(format!("unit `{other}` is not one meshgate measures; use s, m, h, d, w or y")),
    };
    Ok((Duration::from_secs_f64(n * seconds), format!("{value} {unit}")))
}

/// How fresh a port's data is, measured now.
#[derive(Debug, Clone, PartialEq)]
pub struct Freshness {
    /// When the data last changed (the newest file, the last publish), if known.
    pub changed: Option<SystemTime>,
    /// The contract's promise, if any.
    pub limit: Option<AgeLimit>,
}

impl Freshness {
    /// The data's age at `now`, if its last change is known.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        self.changed.map(|c| now.duration_since(c).unwrap_or_default())
    }

    /// Whether the data is older than the contract allows (`false` when either is unknown).
    pub fn breached(&self, now: SystemTime) -> bool {
        matches!((self.age(now), &self.limit), (Some(age), Some(l)) if age > l.limit)
    }

    /// As JSON for `describe`, `FlightInfo` and health.
    pub fn to_json(&self, now: SystemTime) -> Value {
        json!({
            "last_change": self.changed.map(crate::quality::rfc3339),
            "age_seconds": self.age(now).map(|a| a.as_secs()),
            "sla": self.limit.as_ref().map(|l| json!({"property": l.property, "value": l.declared, "seconds": l.limit.as_secs()})),
            "status": match (self.changed, &self.limit) {
                (None, _) => "unknown",
                (_, None) => "no_sla",
                _ if self.breached(now) => "stale",
                _ => "fresh",
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_age_property_is_the_limit() {
        let c = json!({"slaProperties": [
            {"property": "availability", "value": "99.9%"},
            {"property": "frequency", "value": 1, "unit": "d"},
            {"property": "latency", "value": 4, "unit": "h"}]});
        let a = age_limit(&c).unwrap().unwrap();
        assert_eq!((a.property.as_str(), a.limit), ("latency", Duration::from_secs(4 * 3600)));
        assert_eq!(age_limit(&json!({})).unwrap(), None);
        let s = age_limit(&json!({"slaProperties": [{"property": "freshness", "value": "90m"}]})).unwrap().unwrap();
        assert_eq!(s.limit, Duration::from_secs(5400));
    }

    #[test]
    fn bad_units_name_their_entry() {
        let e = age_limit(&json!({"slaProperties": [{"property": "latency", "value": 1, "unit": "fortnight"}]}))
            .unwrap_err();
        assert_eq!(e[0].0, "slaProperties[0]");
        assert!(e[0].1.contains("fortnight"));
        assert!(age_limit(&json!({"slaProperties": [{"property": "latency", "value": -1, "unit": "d"}]})).is_err());
    }

    #[test]
    fn stale_when_older_than_promised() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let limit =
            Some(AgeLimit { property: "latency".into(), declared: "1 h".into(), limit: Duration::from_secs(3600) });
        let old = Freshness { changed: Some(now - Duration::from_secs(7200)), limit: limit.clone() };
        assert!(old.breached(now));
        assert_eq!(old.to_json(now)["status"], "stale");
        let new = Freshness { changed: Some(now - Duration::from_secs(60)), limit };
        assert!(!new.breached(now));
        assert_eq!(Freshness { changed: None, limit: None }.to_json(now)["status"], "unknown");
    }
}
