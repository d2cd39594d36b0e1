//! Bounding what is echoed back to callers and into logs.
//!
//! Names, filters and other values a caller sends appear in error messages ("product `x` ...")
//! and so in the log. A request may carry megabytes; echoing them whole turns one request into
//! megabytes of response and log. Every echoed value goes through [`clip`], and every message
//! leaving the gateway through [`clip_message`].

/// Characters of one echoed value that are kept.
pub const MAX_ECHO_CHARS: usize = 200;

/// Characters of one error message (client or log) that are kept.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// `value` escaped (control characters and quotes visible) and cut to [`MAX_ECHO_CHARS`],
/// saying how long it was when cut.
pub fn clip(value: &str) -> String {
    let kept: String = value.chars().take(MAX_ECHO_CHARS).flat_map(char::escape_default).collect();
    match value.chars().nth(MAX_ECHO_CHARS) {
        None => kept,
        Some(_) => format!("{kept}… ({} bytes in all)", value.len()),
    }
}

/// `value` as it is (not escaped: records keep identities exact), cut to [`MAX_ECHO_CHARS`].
pub fn cut(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHO_CHARS) {
        None => value.to_string(),
        Some((at, _)) => format!("{}…", &value[..at]),
    }
}

/// `message` cut to [`MAX_MESSAGE_CHARS`].
pub fn clip_message(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => message,
        Some((at, _)) => format!("{}… (message cut; {} bytes in all)", &message[..at], message.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_say_so() {
        assert_eq!(clip("orders"), "orders");
        assert_eq!(clip("a\nb"), "a\\nb");
        let big = "x".repeat(10 << 20);
        let c = clip(&big);
        assert!(c.len() < 300, "{}", c.len());
        assert!(c.ends_with("(10485760 bytes in all)"));
        let m = clip_message("é".repeat(5000));
        assert!(m.chars().count() < MAX_MESSAGE_CHARS + 60);
        assert_eq!(clip_message("short".into()), "short");
    }
}
