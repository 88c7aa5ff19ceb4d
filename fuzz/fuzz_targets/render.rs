//! Fuzz target: `output::render` of any token that passes `is_b64token` yields files whose
//! structure a shell or an HTTP client cannot misread: `env` is exactly two plain assignments
//! whose values contain no shell metacharacter, `header` exactly one header line, `json` a
//! JSON object carrying the token intact. Arbitrary template text parses or is refused, never
//! panics. It does no I/O.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use bearerd::output::{Format, Template, is_env_variable, render};
use bearerd::secret::Secret;
use bearerd::token::{Token, is_b64token};
use libfuzzer_sys::fuzz_target;

/// Bytes that may appear in an unquoted `env` value: RFC 6750 `b64token`, none special to sh.
fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~+/=".contains(&byte)
}

fuzz_target!(|input: (&str, &str, u64, u64, &str)| {
    let (access_token, variable, issued, lifetime, template) = input;
    let client = "fuzz";
    if let Ok(template) = Template::parse(template) {
        let token = Token {
            access_token: Secret::new(access_token),
            token_type: "Bearer".to_owned(),
            scope: None,
            issued_at: UNIX_EPOCH,
            expires_at: UNIX_EPOCH + Duration::from_secs(lifetime % (1 << 40)),
            issued_token_type: None,
        };
        let _ = render(&Format::Template(template), &token, client);
    }
    if !is_b64token(access_token) {
        return;
    }
    let issued_at = UNIX_EPOCH + Duration::from_secs(issued % (1 << 40));
    let token = Token {
        access_token: Secret::new(access_token),
        token_type: "Bearer".to_owned(),
        scope: Some("a b".to_owned()),
        issued_at,
        expires_at: issued_at + Duration::from_secs(lifetime % (1 << 40)),
        issued_token_type: None,
    };

    if is_env_variable(variable) {
        let format = Format::Env {
            variable: variable.to_owned(),
        };
        let text = String::from_utf8(render(&format, &token, client)).expect("UTF-8");
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        let value = lines[0]
            .strip_prefix(variable)
            .and_then(|rest| rest.strip_prefix('='))
            .expect("VARIABLE=");
        let bare = match value.strip_prefix('\'') {
            // Only a leading `~` is quoted, and then the whole value, with nothing inside
            // that could end the quotes.
            Some(rest) => {
                let inner = rest.strip_suffix('\'').expect("closing quote");
                assert!(inner.starts_with('~'), "{value:?}");
                inner
            }
            None => {
                assert!(!value.starts_with('~'), "{value:?}");
                value
            }
        };
        assert_eq!(bare, access_token);
        assert!(bare.bytes().all(plain), "{value:?}");
        let expiry = lines[1]
            .strip_prefix(variable)
            .and_then(|rest| rest.strip_prefix("_EXPIRES_AT="))
            .expect("VARIABLE_EXPIRES_AT=");
        assert!(
            !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit()),
            "{expiry:?}"
        );
    }

    let header = String::from_utf8(render(&Format::Header, &token, client)).expect("UTF-8");
    let value = header
        .strip_prefix("Authorization: Bearer ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .expect("one header line");
    assert_eq!(value, access_token);
    assert!(!value.bytes().any(|b| b.is_ascii_control() || b == b' '));

    assert_eq!(
        render(&Format::Token, &token, client),
        access_token.as_bytes()
    );

    let json: serde_json::Value =
        serde_json::from_slice(&render(&Format::Json, &token, client)).expect("valid JSON");
    assert_eq!(json["access_token"], access_token);
});
