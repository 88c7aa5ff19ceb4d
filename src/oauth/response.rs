//! A token endpoint's response, as bytes, turned into a [`Token`] or a classified
//! [`FetchError`]: expiry, the RFC 6749/6750 syntax checks, OAuth error codes, `Retry-After`,
//! and untrusted text made fit for a message (excerpts, status lines, redaction). It does no
//! I/O and reads no clock (`now` is an argument), so it can be fuzzed
//! (`fuzz/fuzz_targets/token_response.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Map, Value};

use super::error::FetchError;
use crate::secret::Secret;
use crate::token::{Token, is_b64token, is_token_type_uri};

/// The longest lifetime believed; longer `expires_in` or `exp` values are clamped to it.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The shortest lifetime a token is given, so that an expiry a moment away is still a future one.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// The longest excerpt of an error body quoted in a message, in characters.
const EXCERPT_CHARS: usize = 120;

/// OAuth error codes (RFC 6749 §5.2) that no retry can heal.
const PERMANENT_ERRORS: [&str; 6] = [
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "invalid_grant",
    "unsupported_grant_type",
    "invalid_request",
];

/// OAuth error codes that say the server is temporarily unable, whatever the status.
const TRANSIENT_ERRORS: [&str; 2] = ["server_error", "temporarily_unavailable"];

/// A token endpoint's response turned into a [`Token`] or a classified [`FetchError`] whose
/// message starts with the status (the caller prefixes the endpoint). Pure: `now` stamps the
/// token and converts an HTTP-date `Retry-After`.
///
/// Lifetime: `expires_in` (a number or numeric string, fractions truncated) and a JWT token's
/// `exp` claim (read, not verified); the earlier expiry wins; with neither, `default_lifetime`.
/// A non-positive `expires_in` is ignored as if absent (some servers send 0 for "unspecified");
/// an `exp` not after `now` is ignored (a skewed clock, ours or theirs, must not make every
/// token look dead); anything beyond [`MAX_LIFETIME`] is clamped to it; the result is at least
/// [`MIN_LIFETIME`]. Each of these is logged as a warning.
///
/// `token_type` is kept as sent (`Bearer` when absent). Another type (e.g. `DPoP`) is accepted
/// with a warning, since bearerd writes the token wherever it is told to, but it must match the
/// RFC 6749 type-name syntax, and `scope` must match RFC 6749 §3.3: either would otherwise reach
/// templated files unchecked.
pub fn parse_response(
    status: u16,
    retry_after: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    now: SystemTime,
    default_lifetime: Duration,
) -> Result<Token, FetchError> {
    if !(200..300).contains(&status) {
        return Err(error_status(status, retry_after, body, Some(now)));
    }
    let object = json_object(status, content_type, body)?;
    let access_token = match object.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => token,
        _ => {
            let explanation = oauth_error(&object).map(|(code, text)| (classify_code(&code), text));
            return Err(match explanation {
                Some((Some(true), text)) => FetchError::permanent(format!(
                    "{} but no access_token: {text}",
                    status_line(status)
                )),
                Some((_, text)) => FetchError::transient(format!(
                    "{} but no access_token: {text}",
                    status_line(status)
                )),
                None => {
                    FetchError::transient(format!("{} but no access_token", status_line(status)))
                }
            });
        }
    };
    if !is_b64token(access_token) {
        return Err(FetchError::permanent(format!(
            "{} but the access_token ({} bytes) has characters an RFC 6750 bearer token may not \
             have; a hostile token, refused",
            status_line(status),
            access_token.len()
        )));
    }
    let token_type = match object.get("token_type") {
        None | Some(Value::Null) => {
            tracing::debug!("no token_type in the response; assuming Bearer");
            "Bearer".to_owned()
        }
        Some(Value::String(kind)) if is_type_name(kind) => {
            if !kind.eq_ignore_ascii_case("bearer") {
                tracing::warn!(token_type = %kind, "the token is not a bearer token; using it anyway");
            }
            kind.clone()
        }
        Some(_) => {
            return Err(FetchError::permanent(format!(
                "{} but token_type is not an RFC 6749 type name; a hostile response, refused",
                status_line(status)
            )));
        }
    };
    let scope = match object.get("scope") {
        None | Some(Value::Null) => None,
        Some(Value::String(scope)) if scope.is_empty() => None,
        Some(Value::String(scope)) if is_scope(scope) => Some(scope.clone()),
        // Some servers send a list; the standard form is space-separated.
        Some(Value::Array(items))
            if items.iter().all(|item| item.as_str().is_some_and(is_scope)) =>
        {
            let joined: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!joined.is_empty()).then(|| joined.join(" "))
        }
        Some(_) => {
            return Err(FetchError::permanent(format!(
                "{} but scope is not an RFC 6749 scope; a hostile response, refused",
                status_line(status)
            )));
        }
    };
    let expires_in = match object.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let seconds = match value {
                Value::Number(number) => number.as_f64(),
                Value::String(text) => text.trim().parse::<f64>().ok(),
                _ => None,
            };
            let seconds = seconds.filter(|seconds| seconds.is_finite());
            if seconds.is_none() {
                tracing::warn!("expires_in is not a number; ignoring it");
            }
            seconds
        }
    };
    let issued_token_type = match object.get("issued_token_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(kind)) if is_token_type_uri(kind) => Some(kind.clone()),
        Some(_) => {
            return Err(FetchError::permanent(format!(
                "{} but issued_token_type is not a token type URI; a hostile response, refused",
                status_line(status)
            )));
        }
    };
    let expires_at = expiry(expires_in, jwt_expiry(access_token), now, default_lifetime);
    Ok(Token {
        access_token: Secret::new(access_token.clone()),
        token_type,
        scope,
        issued_at: now,
        expires_at,
        issued_token_type,
    })
}

/// When a token issued at `now` expires; see [`parse_response`] for the rules.
fn expiry(
    expires_in: Option<f64>,
    jwt_exp: Option<f64>,
    now: SystemTime,
    default_lifetime: Duration,
) -> SystemTime {
    let max_seconds = MAX_LIFETIME.as_secs_f64();
    let from_expires_in = expires_in.and_then(|seconds| {
        let seconds = seconds.trunc();
        if seconds <= 0.0 {
            tracing::warn!(
                expires_in = seconds,
                "expires_in is not positive; ignoring it"
            );
            None
        } else if seconds > max_seconds {
            tracing::warn!(
                expires_in = seconds,
                "expires_in is over a year; assuming a year"
            );
            Some(MAX_LIFETIME)
        } else {
            Some(Duration::from_secs_f64(seconds))
        }
    });
    let from_exp = jwt_exp.and_then(|exp| {
        let now_seconds = now
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or(0.0);
        let remaining = exp - now_seconds;
        if remaining <= 0.0 {
            tracing::warn!(
                exp,
                "the token's JWT exp is not in the future (clock skew?); ignoring it"
            );
            None
        } else if remaining > max_seconds {
            tracing::warn!(
                exp,
                "the token's JWT exp is over a year away; assuming a year"
            );
            Some(MAX_LIFETIME)
        } else {
            Some(Duration::from_secs_f64(remaining))
        }
    });
    if let (Some(by_expires_in), Some(by_exp)) = (from_expires_in, from_exp)
        && by_exp + Duration::from_secs(1) < by_expires_in
    {
        tracing::debug!(
            expires_in = by_expires_in.as_secs(),
            exp_in = by_exp.as_secs(),
            "the JWT exp is earlier than expires_in says; using exp"
        );
    }
    let lifetime = match (from_expires_in, from_exp) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => default_lifetime.min(MAX_LIFETIME),
    };
    now.checked_add(lifetime.max(MIN_LIFETIME)).unwrap_or(now)
}

/// The `exp` claim of a JWS-shaped token (`header.payload.signature`), unverified.
pub(super) fn jwt_expiry(token: &str) -> Option<f64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let payload = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    claims.get("exp")?.as_f64().filter(|exp| exp.is_finite())
}

/// RFC 6749 §11.1 `type-name = 1*name-char`, `name-char = "-" / "." / "_" / DIGIT / ALPHA`.
fn is_type_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// RFC 6749 §3.3: `scope-token *( SP scope-token )`, `scope-token = 1*NQCHAR`.
fn is_scope(text: &str) -> bool {
    text.split(' ').all(|token| {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    })
}

/// The body as a JSON object, or a transient error that quotes nothing of it (it is a 2xx body
/// and may hold a token).
pub(super) fn json_object(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, FetchError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(FetchError::transient(format!(
            "{} but the JSON body is not an object",
            status_line(status)
        ))),
        Err(error) => {
            let media_type = content_type
                .map(|value| value.split(';').next().unwrap_or(value).trim())
                .filter(|media| !media.is_empty());
            let message = match media_type {
                Some(media) if !media.to_ascii_lowercase().contains("json") => format!(
                    "{} but the body is not JSON ({})",
                    status_line(status),
                    excerpt(media.as_bytes())
                ),
                _ if body.iter().all(u8::is_ascii_whitespace) => {
                    format!("{} but the body is empty", status_line(status))
                }
                _ => format!("{} but invalid JSON: {error}", status_line(status)),
            };
            Err(FetchError::transient(message))
        }
    }
}

/// A non-2xx response, classified. RFC 6749 error codes decide first (permanent ones, and
/// `server_error`/`temporarily_unavailable` as transient), then the status: 408, 429 and 5xx
/// are transient; 3xx (redirects are not followed) and the other 4xx are permanent.
pub(super) fn error_status(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now: Option<SystemTime>,
) -> FetchError {
    let line = status_line(status);
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let oauth = parsed
        .as_ref()
        .and_then(Value::as_object)
        .and_then(oauth_error);
    let (by_code, detail) = match &oauth {
        Some((code, text)) => (classify_code(code), text.clone()),
        None if body.iter().all(u8::is_ascii_whitespace) => (None, "(empty body)".to_owned()),
        None => (None, excerpt(body)),
    };
    let by_status = matches!(status, 408 | 429 | 500..=599);
    let permanent = by_code.unwrap_or(!by_status);
    let message = if (300..400).contains(&status) {
        format!("{line} (redirects are not followed): {detail}")
    } else {
        format!("{line}: {detail}")
    };
    let endpoint_unreachable = status == 404;
    if permanent {
        FetchError::Permanent {
            message,
            endpoint_unreachable,
        }
    } else {
        FetchError::Transient {
            message,
            retry_after: retry_after.and_then(|value| match now {
                Some(now) => parse_retry_after(value, now),
                None => parse_retry_after_seconds(value),
            }),
            endpoint_unreachable,
        }
    }
}

/// `Some(true)` for a code no retry heals, `Some(false)` for a temporary one, else `None`.
fn classify_code(code: &str) -> Option<bool> {
    if PERMANENT_ERRORS.contains(&code) {
        Some(true)
    } else if TRANSIENT_ERRORS.contains(&code) {
        Some(false)
    } else {
        None
    }
}

/// An RFC 6749 §5.2 error: the code and `code: description`, both sanitised.
fn oauth_error(object: &Map<String, Value>) -> Option<(String, String)> {
    let code = object.get("error")?.as_str()?;
    let code = excerpt(code.as_bytes());
    let text = match object.get("error_description").and_then(Value::as_str) {
        Some(description) if !description.trim().is_empty() => {
            format!("{code}: {}", excerpt(description.as_bytes()))
        }
        _ => code.clone(),
    };
    Some((code, text))
}

/// `Retry-After` as delta-seconds or an HTTP-date (relative to `now`; a past date is zero).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Some(delay) = parse_retry_after_seconds(value) {
        return Some(delay);
    }
    let date = httpdate::parse_http_date(value.trim()).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Retry-After` as delta-seconds only.
fn parse_retry_after_seconds(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Too many digits for a u64 is still "a very long time".
    Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)))
}

/// At most [`EXCERPT_CHARS`] characters of untrusted text, fit for a one-line message: control
/// characters and runs of whitespace become one space, bidirectional overrides are dropped.
pub(super) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut count = 0;
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            space = count > 0;
            continue;
        }
        if matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            continue;
        }
        let needed = usize::from(space) + 1;
        if count + needed > EXCERPT_CHARS - 1 {
            out.push('…');
            return out;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
        count += needed;
    }
    out
}

/// `503 Service Unavailable`, or the bare number for an unknown status.
pub(super) fn status_line(status: u16) -> String {
    match StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// `bytes` with every occurrence of each of `forms` replaced by `[redacted]`.
pub(super) fn redact_bytes(bytes: &[u8], forms: &[String]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for form in forms.iter().map(String::as_bytes) {
        if form.is_empty() || !out.windows(form.len()).any(|window| window == form) {
            continue;
        }
        let mut replaced = Vec::with_capacity(out.len());
        let mut rest = out.as_slice();
        while !rest.is_empty() {
            if rest.starts_with(form) {
                replaced.extend_from_slice(b"[redacted]");
                rest = &rest[form.len()..];
            } else {
                replaced.push(rest[0]);
                rest = &rest[1..];
            }
        }
        out = replaced;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::fixtures::{DEFAULT, now};

    fn ok(body: &str) -> Result<Token, FetchError> {
        parse_response(
            200,
            None,
            Some("application/json"),
            body.as_bytes(),
            now(),
            DEFAULT,
        )
    }

    fn lifetime(body: &str) -> Duration {
        let token = ok(body).expect("a token");
        token
            .expires_at
            .duration_since(token.issued_at)
            .expect("expires after issue")
    }

    /// A JWT-shaped token whose payload is `claims` (header and signature are filler).
    fn jwt(claims: &Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn refused(status: u16, content_type: &str, body: &str) -> FetchError {
        parse_response(
            status,
            None,
            Some(content_type),
            body.as_bytes(),
            now(),
            DEFAULT,
        )
        .expect_err("an error")
    }

    // ---- parse_response: success and lifetime ----

    #[test]
    fn a_complete_response_becomes_a_token() {
        let token = ok(r#"{"access_token":"abc.DEF-_~+/9==","token_type":"Bearer",
                           "expires_in":3600,"scope":"tasks:read tasks:write"}"#)
        .expect("a token");
        assert_eq!(token.access_token.expose(), "abc.DEF-_~+/9==");
        assert_eq!(token.token_type, "Bearer");
        assert_eq!(token.scope.as_deref(), Some("tasks:read tasks:write"));
        assert_eq!(token.issued_at, now());
        assert_eq!(token.expires_at, now() + Duration::from_secs(3600));
    }

    #[test]
    fn expires_in_may_be_a_string_or_a_float() {
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"3600"}"#).as_secs(),
            3600
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":" 120 "}"#).as_secs(),
            120
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":3600.9}"#),
            Duration::from_secs(3600)
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"59.5"}"#),
            Duration::from_secs(59)
        );
    }

    #[test]
    fn absent_or_unusable_expires_in_falls_back_to_the_default() {
        for body in [
            r#"{"access_token":"t"}"#,
            r#"{"access_token":"t","expires_in":null}"#,
            r#"{"access_token":"t","expires_in":0}"#,
            r#"{"access_token":"t","expires_in":-5}"#,
            r#"{"access_token":"t","expires_in":"-5"}"#,
            r#"{"access_token":"t","expires_in":0.4}"#,
            r#"{"access_token":"t","expires_in":"soon"}"#,
            r#"{"access_token":"t","expires_in":true}"#,
        ] {
            assert_eq!(lifetime(body), DEFAULT, "{body}");
        }
    }

    #[test]
    fn a_huge_expires_in_is_clamped_to_a_year() {
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":1e30}"#),
            MAX_LIFETIME
        );
        assert_eq!(
            lifetime(r#"{"access_token":"t","expires_in":"99999999999"}"#),
            MAX_LIFETIME
        );
    }

    #[test]
    fn a_jwt_exp_is_used_without_expires_in() {
        let token = jwt(&serde_json::json!({"sub": "x", "exp": 1_700_000_120}));
        let body = serde_json::json!({"access_token": token}).to_string();
        assert_eq!(lifetime(&body), Duration::from_secs(120));
    }

    #[test]
    fn the_earlier_of_expires_in_and_exp_wins() {
        let token = jwt(&serde_json::json!({"exp": 1_700_000_100}));
        let cached = serde_json::json!({"access_token": token, "expires_in": 3600}).to_string();
        assert_eq!(lifetime(&cached), Duration::from_secs(100));
        let token = jwt(&serde_json::json!({"exp": 1_700_003_600}));
        let short = serde_json::json!({"access_token": token, "expires_in": 60}).to_string();
        assert_eq!(lifetime(&short), Duration::from_secs(60));
    }

    #[test]
    fn a_past_or_absurd_exp_is_not_believed() {
        let past = jwt(&serde_json::json!({"exp": 1_699_999_000}));
        let body = serde_json::json!({"access_token": past, "expires_in": 300}).to_string();
        assert_eq!(lifetime(&body), Duration::from_secs(300));
        let body = serde_json::json!({"access_token": past}).to_string();
        assert_eq!(lifetime(&body), DEFAULT);
        let far = jwt(&serde_json::json!({"exp": 9_999_999_999_u64}));
        let body = serde_json::json!({"access_token": far}).to_string();
        assert_eq!(lifetime(&body), MAX_LIFETIME);
        let text = jwt(&serde_json::json!({"exp": "tomorrow"}));
        let body = serde_json::json!({"access_token": text}).to_string();
        assert_eq!(lifetime(&body), DEFAULT);
    }

    #[test]
    fn an_expiry_a_moment_away_still_lies_in_the_future() {
        let token = jwt(&serde_json::json!({"exp": 1_700_000_000.2}));
        let body = serde_json::json!({"access_token": token}).to_string();
        assert_eq!(lifetime(&body), MIN_LIFETIME);
    }

    #[test]
    fn non_jwt_tokens_with_dots_are_not_jwts() {
        for token in ["a.b", "a.b.c.d.e", "a.!!!.c", "a.bm90IGpzb24.c"] {
            let body = serde_json::json!({"access_token": token}).to_string();
            if is_b64token(token) {
                assert_eq!(lifetime(&body), DEFAULT, "{token}");
            }
        }
    }

    #[test]
    fn token_type_is_kept_as_sent() {
        let token = ok(r#"{"access_token":"t","token_type":"bearer"}"#).expect("token");
        assert_eq!(token.token_type, "bearer");
        let token = ok(r#"{"access_token":"t","token_type":"DPoP"}"#).expect("token");
        assert_eq!(token.token_type, "DPoP");
        let token = ok(r#"{"access_token":"t"}"#).expect("token");
        assert_eq!(token.token_type, "Bearer");
    }

    #[test]
    fn a_token_type_that_could_break_a_file_is_refused() {
        for kind in [r#""Bearer\nX: y""#, r#""Bear er""#, "42", r#""""#] {
            let body = format!(r#"{{"access_token":"t","token_type":{kind}}}"#);
            assert!(ok(&body).expect_err("refused").is_permanent(), "{body}");
        }
    }

    #[test]
    fn scope_is_optional_and_checked() {
        assert_eq!(
            ok(r#"{"access_token":"t","scope":""}"#).expect("t").scope,
            None
        );
        assert_eq!(
            ok(r#"{"access_token":"t","scope":["a","b:c"]}"#)
                .expect("t")
                .scope
                .as_deref(),
            Some("a b:c")
        );
        for scope in [r#""a\"b""#, r#""a\nb""#, r#""a  b""#, r#""ü""#] {
            let body = format!(r#"{{"access_token":"t","scope":{scope}}}"#);
            assert!(ok(&body).expect_err("refused").is_permanent(), "{body}");
        }
    }

    // ---- parse_response: bad tokens and bodies ----

    #[test]
    fn a_missing_access_token_is_transient() {
        for body in [
            r#"{"token_type":"Bearer"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":42}"#,
            r#"{"access_token":null}"#,
        ] {
            let error = ok(body).expect_err("no token");
            assert!(!error.is_permanent(), "{body}");
            assert_eq!(error.message(), "200 OK but no access_token");
        }
    }

    #[test]
    fn a_200_carrying_an_oauth_error_is_classified_by_its_code() {
        let error =
            ok(r#"{"error":"invalid_client","error_description":"nope"}"#).expect_err("no token");
        assert!(error.is_permanent());
        assert_eq!(
            error.message(),
            "200 OK but no access_token: invalid_client: nope"
        );
    }

    #[test]
    fn hostile_tokens_are_permanent_and_never_quoted() {
        for token in [
            "evil token",
            "evil\ntoken",
            "evil\"token",
            "$(evil)",
            "évil",
            "evil=x",
        ] {
            let body = serde_json::json!({"access_token": token, "expires_in": 60}).to_string();
            let error = ok(&body).expect_err("hostile");
            assert!(error.is_permanent(), "{token:?}");
            assert!(error.message().contains("hostile"), "{}", error.message());
            assert!(!error.message().contains("evil"), "{}", error.message());
        }
    }

    #[test]
    fn a_2xx_body_that_is_not_json_is_never_quoted() {
        let error = refused(200, "text/html", "<html>SECRET-TOKEN-abc</html>");
        assert!(!error.is_permanent());
        assert_eq!(
            error.message(),
            "200 OK but the body is not JSON (text/html)"
        );
        let error = error_of(
            200,
            Some("application/json"),
            r#"{"access_token":"SECRET-TOKEN"#,
        );
        assert!(!error.is_permanent());
        assert!(
            error
                .message()
                .starts_with("200 OK but invalid JSON: EOF while parsing"),
            "{}",
            error.message()
        );
        assert!(!error.message().contains("SECRET"));
        let error = error_of(200, None, "access_token=SECRET");
        assert!(
            error.message().starts_with("200 OK but invalid JSON: "),
            "{}",
            error.message()
        );
        assert!(!error.message().contains("SECRET"));
        let error = error_of(201, Some("application/json; charset=utf-8"), "");
        assert_eq!(error.message(), "201 Created but the body is empty");
        let error = error_of(200, Some("application/json"), r#"["SECRET"]"#);
        assert_eq!(error.message(), "200 OK but the JSON body is not an object");
    }

    fn error_of(status: u16, content_type: Option<&str>, body: &str) -> FetchError {
        parse_response(status, None, content_type, body.as_bytes(), now(), DEFAULT)
            .expect_err("an error")
    }

    // ---- parse_response: error statuses ----

    #[test]
    fn oauth_errors_are_reported_with_their_description() {
        let error = refused(
            401,
            "application/json",
            r#"{"error":"invalid_client","error_description":"Invalid client\ncredentials"}"#,
        );
        assert_eq!(
            error,
            FetchError::Permanent {
                message: "401 Unauthorized: invalid_client: Invalid client credentials".into(),
                endpoint_unreachable: false,
            }
        );
        let error = refused(400, "application/json", r#"{"error":"invalid_scope"}"#);
        assert_eq!(error.message(), "400 Bad Request: invalid_scope");
        assert!(error.is_permanent());
    }

    #[test]
    fn classification_by_code_and_status() {
        let cases: [(u16, &str, bool); 14] = [
            (400, r#"{"error":"invalid_request"}"#, true),
            (400, r#"{"error":"invalid_grant"}"#, true),
            (400, r#"{"error":"unauthorized_client"}"#, true),
            (400, r#"{"error":"unsupported_grant_type"}"#, true),
            (400, r#"{"error":"something_new"}"#, true),
            (400, r#"{"error":"temporarily_unavailable"}"#, false),
            (500, r#"{"error":"server_error"}"#, false),
            (500, r#"{"error":"invalid_client"}"#, true),
            (401, "", true),
            (403, "forbidden", true),
            (408, "", false),
            (429, r#"{"error":"slow_down"}"#, false),
            (503, r#"{"message":"maintenance"}"#, false),
            (302, "", true),
        ];
        for (status, body, permanent) in cases {
            let error = refused(status, "application/json", body);
            assert_eq!(error.is_permanent(), permanent, "{status} {body}: {error}");
            assert!(!error.endpoint_unreachable(), "{status}");
        }
        let redirect = refused(302, "text/html", "");
        assert_eq!(
            redirect.message(),
            "302 Found (redirects are not followed): (empty body)"
        );
    }

    #[test]
    fn a_404_marks_the_endpoint_unreachable() {
        let error = refused(404, "text/plain", "no such path");
        assert_eq!(
            error,
            FetchError::Permanent {
                message: "404 Not Found: no such path".into(),
                endpoint_unreachable: true,
            }
        );
    }

    #[test]
    fn an_html_error_page_is_quoted_short_and_on_one_line() {
        let page = format!(
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\n\t<body>\u{1b}[31m{}</body></html>",
            "x".repeat(500)
        );
        let error = refused(502, "text/html", &page);
        assert!(!error.is_permanent());
        let message = error.message();
        let quoted = message
            .strip_prefix("502 Bad Gateway: ")
            .expect("status first");
        assert!(quoted.starts_with("<html> <head><title>502 Bad Gateway</title></head> <body>"));
        assert!(quoted.chars().count() <= 120, "{}", quoted.chars().count());
        assert!(quoted.ends_with('…'));
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(!message.contains("  "));
    }

    #[test]
    fn retry_after_is_honoured_on_transient_errors_only() {
        let later = httpdate::fmt_http_date(now() + Duration::from_secs(30));
        for (value, expected) in [("7", Some(7)), (later.as_str(), Some(30)), ("soon", None)] {
            let error =
                parse_response(429, Some(value), None, b"", now(), DEFAULT).expect_err("error");
            assert_eq!(
                error.retry_after(),
                expected.map(Duration::from_secs),
                "{value}"
            );
        }
        let error = parse_response(401, Some("7"), None, b"", now(), DEFAULT).expect_err("error");
        assert_eq!(error.retry_after(), None);
    }

    #[test]
    fn retry_after_forms() {
        let at = |seconds: u64| httpdate::fmt_http_date(now() + Duration::from_secs(seconds));
        let secs = |value: &str| parse_retry_after(value, now()).map(|d| d.as_secs());
        assert_eq!(secs("0"), Some(0));
        assert_eq!(secs("120"), Some(120));
        assert_eq!(secs(" 5 "), Some(5));
        assert_eq!(secs("99999999999999999999999"), Some(u64::MAX));
        assert_eq!(secs(&at(90)), Some(90));
        assert_eq!(
            secs(&httpdate::fmt_http_date(now() - Duration::from_secs(90))),
            Some(0)
        );
        assert_eq!(secs("Sun, 06 Nov 1994 08:49:37 GMT"), Some(0));
        for bad in ["", "-1", "1.5", "soon", "12 s"] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }
}
