//! Fuzz target: `oauth::parse_response` on an arbitrary status, `Retry-After` and body never
//! panics; a token it accepts is an RFC 6750 `b64token` with an expiry within the clamps.
//! It does no I/O.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use bearerd::oauth::{MAX_LIFETIME, MIN_LIFETIME, parse_response};
use bearerd::token::is_b64token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, Option<String>, bool, &[u8])| {
    let (status_choice, retry_after, json_type, body) = input;
    // Mostly 200, sometimes an error status, so both paths get explored.
    let status = match status_choice % 8 {
        0..=3 => 200,
        4 => 400,
        5 => 401,
        6 => 429,
        _ => 500 + u16::from(status_choice % 100),
    };
    let content_type = json_type.then_some("application/json");
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let default_lifetime = Duration::from_secs(300);
    match parse_response(
        status,
        retry_after.as_deref(),
        content_type,
        body,
        now,
        default_lifetime,
    ) {
        Ok(token) => {
            assert_eq!(status, 200);
            assert!(is_b64token(token.access_token.expose()));
            assert!(token.expires_at >= now + MIN_LIFETIME);
            assert!(token.expires_at <= now + MAX_LIFETIME);
            assert!(!token.token_type.is_empty());
            assert!(
                !token
                    .token_type
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b' ')
            );
            if let Some(scope) = &token.scope {
                assert!(
                    !scope
                        .bytes()
                        .any(|b| b.is_ascii_control() || b == b'"' || b == b'\\')
                );
            }
        }
        Err(error) => {
            assert!(!error.message().is_empty());
            assert!(
                !error.message().contains('\n'),
                "one line: {:?}",
                error.message()
            );
        }
    }
});
