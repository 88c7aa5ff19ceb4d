//! Values that must never be printed: client secrets and access tokens.
//! Nothing here logs or formats a secret's value; `expose()` is the only way to read one.

use std::fmt;

/// A client secret, private key or access token. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's value. Call it only where the value leaves for the wire or a token file.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, stable name for the value that reveals nothing useful about it (for logs).
    pub(crate) fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The first 8 hex digits of the SHA-256 of `bytes`: enough to tell tokens apart in logs.
fn fingerprint(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    hex(&digest.as_ref()[..4])
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some([redacted])");
        assert_eq!(secret.expose(), "hunter2-very-secret");
    }

    #[test]
    fn fingerprint_is_short_stable_and_distinct() {
        let a = Secret::new("token-a").fingerprint();
        assert_eq!(a.len(), 8);
        assert_eq!(a, Secret::new("token-a").fingerprint());
        assert_ne!(a, Secret::new("token-b").fingerprint());
        assert!(!a.contains("token"));
    }
}
