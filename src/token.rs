//! An access token as issued ([`Token`]) and the RFC 6750 `b64token` syntax every accepted token
//! has ([`is_b64token`]). It must not fetch, parse responses, read the clock or format a token.

use std::time::SystemTime;

use crate::secret::Secret;

/// A token as issued, after validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub access_token: Secret,
    /// As the server spelled it; compared case-insensitively.
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// RFC 8693 `issued_token_type`, when a token exchange's response named it.
    pub issued_token_type: Option<String>,
}

/// Whether `text` may be an RFC 8693 token type: an absolute URI of at most 512 characters
/// made of RFC 3986 characters (no space, quote, backslash or control character), so that it
/// is safe in every output format.
pub fn is_token_type_uri(text: &str) -> bool {
    (1..=512).contains(&text.len())
        && text.contains(':')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b))
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`. Such a
/// token cannot break a header line, a shell word or a JSON string.
pub fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// A token for unit tests: `Bearer`, issued 300 s before `expires_at` (Unix seconds).
#[cfg(test)]
pub(crate) fn sample(access_token: &str, scope: Option<&str>, expires_at: u64) -> Token {
    use std::time::{Duration, UNIX_EPOCH};
    Token {
        scope: scope.map(str::to_owned),
        ..sample_between(
            access_token,
            UNIX_EPOCH + Duration::from_secs(expires_at - 300),
            UNIX_EPOCH + Duration::from_secs(expires_at),
        )
    }
}

/// A token for unit tests: `Bearer`, no scope, good from `issued_at` until `expires_at`.
#[cfg(test)]
pub(crate) fn sample_between(
    access_token: &str,
    issued_at: SystemTime,
    expires_at: SystemTime,
) -> Token {
    Token {
        access_token: Secret::new(access_token),
        token_type: "Bearer".to_owned(),
        scope: None,
        issued_at,
        expires_at,
        issued_token_type: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64token_syntax() {
        for good in ["a", "abc==", "A-Z.a_z~0+9/", "x=", "eyJ.eyJ.sig"] {
            assert!(is_b64token(good), "{good}");
        }
        for bad in [
            "",
            "=",
            "==",
            "a b",
            "a\nb",
            "a\r",
            "a\"b",
            "a'b",
            "$(reboot)",
            "`id`",
            "a;b",
            "tøken",
            "a=b",
            "a\tb",
            "a\\b",
            "a,b",
        ] {
            assert!(!is_b64token(bad), "{bad:?}");
        }
    }
}
