//! The fuzz targets' invariants as proptest properties, so every `cargo test` checks them:
//! config parsing never panics and always locates its errors; token-response parsing never
//! panics and never accepts a token that is not an RFC 6750 `b64token`; rendered `env`,
//! `header`, `token` and `json` files keep their exact structure for any such token.

use std::env::VarError;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use bearerd::config::Config;
use bearerd::oauth::{MAX_LIFETIME, MIN_LIFETIME, parse_response};
use bearerd::output::{Format, render};
use bearerd::secret::Secret;
use bearerd::token::{Token, is_b64token};
use proptest::prelude::*;

const PATH: &str = "/nonexistent-bearerd-properties/bearerd.toml";

/// A valid config touching most keys, for mutation.
const GOOD: &str = r#"
[agent]
refresh_at = 0.8
http_timeout = "10s"
max_concurrent_requests = 4
backoff_min = "1s"
backoff_max = "5m"

[clients.tasklist]
token_url = "https://login.example.com/oauth/token"
client_id = "tasklist-bot"
client_secret = "${SET_SECRET}"
audience = "tasklist.camunda.io"
scope = "tasks:read tasks:write"
auth_method = "client_secret_json"
extra_params = { resource = "https://api.example.com" }

[[clients.tasklist.output]]
path = "/run/bearerd/tasklist.token"

[[clients.tasklist.output]]
path = "/run/bearerd/tasklist.env"
format = "env"
variable = "TASKLIST_TOKEN"
mode = "0640"

[[clients.tasklist.output]]
path = "/run/bearerd/tasklist.netrc"
format = "template"
template = "machine api.example.com password {{ access_token }}"
"#;

fn env(name: &str) -> Result<String, VarError> {
    name.starts_with("SET")
        .then(|| format!("value-of-{name}"))
        .ok_or(VarError::NotPresent)
}

/// Parsing either succeeds or fails with one `PATH:line:col: key: message` line per problem.
fn check_parse(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(Path::new(PATH), text, &env) {
        Ok(config) => {
            let _ = bearerd::check(&config);
        }
        Err(error) => {
            prop_assert!(!error.diagnostics.is_empty());
            let shown = error.to_string();
            // One line per problem kept, and one counting the rest if there were more.
            prop_assert!(error.diagnostics.len() <= bearerd::config::SHOWN_PROBLEMS);
            prop_assert_eq!(
                shown.lines().count(),
                error.diagnostics.len() + usize::from(error.more > 0)
            );
            for line in shown.lines() {
                prop_assert!(line.starts_with(PATH), "{}", line);
            }
        }
    }
    Ok(())
}

/// One edit of `text` at a fraction of its length.
#[derive(Clone, Debug)]
enum Edit {
    Delete(f64, usize),
    Insert(f64, String),
    Duplicate(f64, f64),
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = |fraction: f64, len: usize| ((len as f64) * fraction) as usize;
    for edit in edits {
        match edit {
            Edit::Delete(fraction, count) => {
                let start = at(*fraction, chars.len()).min(chars.len());
                let end = (start + count).min(chars.len());
                chars.drain(start..end);
            }
            Edit::Insert(fraction, inserted) => {
                let start = at(*fraction, chars.len()).min(chars.len());
                chars.splice(start..start, inserted.chars());
            }
            Edit::Duplicate(from, to) => {
                let len = chars.len();
                let (a, b) = (at(*from, len), at(*to, len));
                let (a, b) = (a.min(b), a.max(b).min(len));
                let piece: Vec<char> = chars[a..b].to_vec();
                chars.splice(b..b, piece);
            }
        }
    }
    chars.into_iter().collect()
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0.0..1.0, 1usize..20).prop_map(|(at, count)| Edit::Delete(at, count)),
        (
            0.0..1.0,
            prop_oneof![
                Just("\"".to_owned()),
                Just("[".to_owned()),
                Just("]]".to_owned()),
                Just("=".to_owned()),
                Just("\n".to_owned()),
                Just("${".to_owned()),
                Just("{{".to_owned()),
                Just("[clients.x]\n".to_owned()),
                Just("\"0999\"".to_owned()),
                Just("1e999".to_owned()),
                "\\PC{0,8}",
            ]
        )
            .prop_map(|(at, text)| Edit::Insert(at, text)),
        (0.0..1.0, 0.0..1.0).prop_map(|(from, to)| Edit::Duplicate(from, to)),
    ]
}

/// Characters that would let a value do more than be a word to `sh`, or end a header line.
const SHELL_SPECIAL: &[u8] = b" \t\n\r$`\"'\\;&|<>(){}*?[]!#%^,:@";

fn token(access_token: &str, expires_in: u64) -> Token {
    Token {
        access_token: Secret::new(access_token),
        token_type: "Bearer".to_owned(),
        scope: None,
        issued_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        expires_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + expires_in),
        issued_token_type: None,
    }
}

/// Any JSON value, as text, including hostile strings.
fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        "\\PC{0,12}".prop_map(|s| serde_json::Value::from(s).to_string()),
        "[A-Za-z0-9._~+/-]{1,40}={0,2}".prop_map(|s| serde_json::Value::from(s).to_string()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn config_parse_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        check_parse(&text)?;
    }

    #[test]
    fn config_parse_never_panics_on_a_mutated_valid_config(
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        prop_assert!(Config::parse(Path::new(PATH), GOOD, &env).is_ok());
        check_parse(&apply(GOOD, &edits))?;
    }

    #[test]
    fn parse_response_accepts_only_b64tokens_with_clamped_lifetimes(
        status in prop_oneof![Just(200u16), Just(201u16), 100u16..600],
        access_token in json_value(),
        expires_in in json_value(),
        token_type in json_value(),
        scope in json_value(),
        garbage in "\\PC{0,20}",
        retry_after in proptest::option::of("\\PC{0,12}"),
    ) {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let bodies = [
            format!(
                "{{\"access_token\":{access_token},\"expires_in\":{expires_in},\
                 \"token_type\":{token_type},\"scope\":{scope}}}"
            ),
            format!("{{\"access_token\":{access_token}}}"),
            garbage,
        ];
        for body in bodies {
            let result = parse_response(
                status,
                retry_after.as_deref(),
                Some("application/json"),
                body.as_bytes(),
                now,
                Duration::from_secs(300),
            );
            match result {
                Ok(token) => {
                    prop_assert!((200..300).contains(&status));
                    prop_assert!(is_b64token(token.access_token.expose()));
                    prop_assert!(token.expires_at >= now + MIN_LIFETIME);
                    prop_assert!(token.expires_at <= now + MAX_LIFETIME);
                }
                Err(error) => {
                    prop_assert!(!error.message().contains('\n'), "{}", error.message());
                }
            }
        }
    }

    #[test]
    fn a_b64token_holds_nothing_a_shell_or_header_would_interpret(text in "\\PC{0,40}") {
        if is_b64token(&text) {
            prop_assert!(!text.bytes().any(|b| SHELL_SPECIAL.contains(&b) || !b.is_ascii()));
        }
    }

    #[test]
    fn header_token_and_json_outputs_keep_their_structure(
        access_token in "[A-Za-z0-9._~+/-]{1,80}={0,3}",
        expires_in in 1u64..=MAX_LIFETIME.as_secs(),
    ) {
        let client = "api";
        let issued = token(&access_token, expires_in);

        let header = String::from_utf8(render(&Format::Header, &issued, client)).expect("UTF-8");
        prop_assert_eq!(header, format!("Authorization: Bearer {access_token}\n"));

        prop_assert_eq!(render(&Format::Token, &issued, client), access_token.as_bytes());

        let json: serde_json::Value =
            serde_json::from_slice(&render(&Format::Json, &issued, client)).expect("JSON");
        prop_assert_eq!(&json["access_token"], &serde_json::Value::from(access_token.as_str()));
        prop_assert_eq!(&json["expires_in"], &serde_json::Value::from(expires_in));

        let env = String::from_utf8(render(
            &Format::Env { variable: "API_TOKEN".to_owned() },
            &issued,
            client,
        ))
        .expect("UTF-8");
        let value = env
            .strip_prefix("API_TOKEN=")
            .and_then(|rest| rest.split_once('\n'))
            .map(|(value, _)| value)
            .expect("VARIABLE=");
        let bare = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
        prop_assert_eq!(bare, access_token.as_str());
        prop_assert!(!bare.bytes().any(|b| SHELL_SPECIAL.contains(&b)));
        prop_assert_eq!(env.matches('\n').count(), 2);
    }
}
