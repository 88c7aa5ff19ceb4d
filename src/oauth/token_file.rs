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
        // Compared as numbers, not as `SystemTime`s: a claim before 1970 or past what a
        // `SystemTime` holds must still be judged, not taken for an absent one.
        let claim = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .filter(|seconds| seconds.is_finite())
                .map(Some)
                .ok_or_else(|| {
                    refuse(format!(
                        "has an {name} claim that is not a number (RFC 7519 NumericDate), \
                         not sent"
                    ))
                }),
        };
        let now_seconds = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        if let Some(exp) = claim("exp")?
            && exp <= now_seconds
        {
            return Err(refuse(format!("expired at {}, not sent", unix_time(exp))));
        }
        if let Some(nbf) = claim("nbf")?
            && nbf > now_seconds
        {
            return Err(refuse(format!(
                "not valid before {}, not sent",
                unix_time(nbf)
            )));
        }
    }
    let token = Secret::new(token);
    tracing::debug!(path = %path.display(), token = %token.fingerprint(), "read {}", kind.name());
    Ok(token)
}

/// A NumericDate for a message: RFC 3339 where one can show it (humantime's formatting fails,
/// and `format!` then panics, outside 1970 to 9999), else the number itself.
fn unix_time(seconds: f64) -> String {
    const YEAR_10000: f64 = 253_402_300_800.0;
    if (0.0..YEAR_10000).contains(&seconds) {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds as u64))
            .to_string()
    } else if seconds.abs() < 1e18 {
        format!("Unix time {seconds}")
    } else {
        format!("Unix time {seconds:e}")
    }
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

    pub(super) fn jwt(claims: &str) -> String {
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

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
mod hostile {
    use super::tests::jwt;
    use super::*;

    /// Claims no issuer would write are refused with a message, never a panic, and an
    /// expiry or start that cannot be read or shown is not taken as "none".
    #[test]
    fn absurd_exp_and_nbf_claims_are_refused_without_a_panic() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let shown = path.display().to_string();
        for (claims, reason) in [
            (
                r#"{"nbf":1e12}"#,
                "not valid before Unix time 1000000000000, not sent",
            ),
            (
                r#"{"nbf":1e20}"#,
                "not valid before Unix time 1e20, not sent",
            ),
            (
                r#"{"nbf":1e300}"#,
                "not valid before Unix time 1e300, not sent",
            ),
            (r#"{"exp":-5}"#, "expired at Unix time -5, not sent"),
            (r#"{"exp":-1e300}"#, "expired at Unix time -1e300, not sent"),
            (
                r#"{"exp":"1500000000"}"#,
                "has an exp claim that is not a number (RFC 7519 NumericDate), not sent",
            ),
            (
                r#"{"exp":null}"#,
                "has an exp claim that is not a number (RFC 7519 NumericDate), not sent",
            ),
            (
                r#"{"exp":1800000060,"nbf":"soon"}"#,
                "has an nbf claim that is not a number (RFC 7519 NumericDate), not sent",
            ),
            (
                r#"{"exp":1800000000.5,"nbf":1800000000.75}"#,
                "not valid before 2027-01-15T08:00:00Z, not sent",
            ),
        ] {
            std::fs::write(&path, jwt(claims)).expect("write");
            let error = read(&path, files::Kind::Assertion, now).expect_err(claims);
            assert!(matches!(error, FetchError::TokenFile { .. }), "{claims}");
            assert_eq!(
                error.message(),
                format!("assertion_file {shown}: {reason}"),
                "{claims}"
            );
        }
        for claims in [r#"{"exp":1e300}"#, r#"{"exp":1800000000.5,"nbf":-3}"#] {
            std::fs::write(&path, jwt(claims)).expect("write");
            read(&path, files::Kind::Assertion, now).expect(claims);
        }
    }
}
