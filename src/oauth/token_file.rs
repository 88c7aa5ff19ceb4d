//! A token made by someone else (a client assertion, an RFC 8693 subject or actor token, a
//! `jwt_bearer` assertion), read from its file at every use: bounded, never cached, and,
//! when it is a JWT, refused once its `exp` has passed or before its `nbf`. It sends nothing
//! and never shows the token: a failure names the file and the reason only.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::error::FetchError;
use crate::files;
use crate::secret::Secret;

/// The token in `path` as it is now, ready to send at `now`. Surrounding whitespace (the
/// newline an editor or `echo` adds) is dropped. An unreadable, empty or malformed file, and
/// a JWT that has expired or is not yet valid, is a [`FetchError::TokenFile`]: it heals when
/// the file is rewritten, which the file watch notices.
pub(super) fn read(path: &Path, kind: files::Kind, now: SystemTime) -> Result<Secret, FetchError> {
    let refuse = |reason: String| {
        FetchError::token_file(format!("{} {}: {reason}", kind.name(), path.display()))
    };
    let text =
        files::read_text(path, kind).map_err(|error| FetchError::token_file(error.to_string()))?;
    let token = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if token.is_empty() {
        return Err(refuse("is empty, not sent".to_owned()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refuse(
            "holds characters no token has (spaces, control characters or non-ASCII), not sent"
                .to_owned(),
        ));
    }
    if let Some(claims) = jwt_claims(token) {
        let time = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_f64)
                .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
                .and_then(|seconds| UNIX_EPOCH.checked_add(Duration::from_secs(seconds as u64)))
        };
        if let Some(expires_at) = time("exp")
            && expires_at <= now
        {
            return Err(refuse(format!(
                "expired at {}, not sent",
                humantime::format_rfc3339_seconds(expires_at)
            )));
        }
        if let Some(not_before) = time("nbf")
            && not_before > now
        {
            return Err(refuse(format!(
                "not valid before {}, not sent",
                humantime::format_rfc3339_seconds(not_before)
            )));
        }
    }
    let token = Secret::new(token);
    tracing::debug!(path = %path.display(), token = %token.fingerprint(), "read {}", kind.name());
    Ok(token)
}

/// A compact JWS's claims, if `token` is one (three base64url parts, a JSON object inside).
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let payload = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&payload).ok()? {
        Value::Object(claims) => Some(claims),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn a_token_file_is_checked_before_it_is_sent() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let read_now = |content: &str| {
            std::fs::write(&path, content).expect("write");
            read(&path, files::Kind::ClientAssertion, now)
        };
        let fresh = jwt(r#"{"exp":1800000060,"nbf":1799999990}"#);
        assert_eq!(
            read_now(&format!("{fresh}\n")).expect("fresh").expose(),
            fresh
        );
        assert_eq!(
            read_now("opaque-token").expect("opaque").expose(),
            "opaque-token"
        );
        let shown = path.display();
        for (content, reason) in [
            (
                jwt(r#"{"exp":1800000000}"#),
                "expired at 2027-01-15T08:00:00Z, not sent".to_owned(),
            ),
            (
                jwt(r#"{"nbf":1800000001}"#),
                "not valid before 2027-01-15T08:00:01Z, not sent".to_owned(),
            ),
            ("\n".to_owned(), "is empty, not sent".to_owned()),
            (
                "two\nlines".to_owned(),
                "holds characters no token has (spaces, control characters or non-ASCII), not sent"
                    .to_owned(),
            ),
        ] {
            let error = read_now(&content).expect_err(&reason);
            assert!(matches!(error, FetchError::TokenFile { .. }));
            assert_eq!(
                error.message(),
                format!("client_assertion_file {shown}: {reason}")
            );
        }
        std::fs::remove_file(&path).expect("remove");
        let error = read(&path, files::Kind::SubjectToken, now).expect_err("missing");
        assert!(
            error
                .message()
                .starts_with(&format!("cannot read subject_token_file {shown}")),
            "{error}"
        );
    }
}
