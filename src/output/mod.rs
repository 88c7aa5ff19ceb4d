//! Token files: what an output is ([`OutputSpec`], [`Format`]) and [`render`], which turns a
//! token into a format's exact bytes (pure: no I/O, no clock); templates are in `template`, the
//! atomic writes that put the bytes on disk in `atomic`, their directories' syncs, grouped per
//! batch, in `dirsync`. It must not fetch, retry, schedule or
//! log, nor know the config or the token request; no error it returns contains a token.

mod atomic;
mod dirsync;
mod template;

use std::path::PathBuf;

use serde::Serialize;

use crate::token::Token;

pub(crate) use self::atomic::{
    Durability, TEMP_NAME_EXTRA, remove_output, sweep_stale_temps, write_atomic_as,
    write_if_changed,
};
pub(crate) use self::dirsync::{DirSync, RenamedIn, WriteComing, settle};
pub use self::template::Template;
pub(crate) use self::template::rfc3339;
use self::template::unix_seconds;

/// One `[[clients.NAME.output]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSpec {
    pub path: PathBuf,
    pub(crate) format: Format,
    /// Permission bits of the file, exactly (the umask does not apply).
    pub(crate) mode: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    Token,
    Env { variable: String },
    Header,
    Json,
    Template(Template),
}

impl Format {
    /// The name used in the config's `format = "…"`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Env { .. } => "env",
            Self::Header => "header",
            Self::Json => "json",
            Self::Template(_) => "template",
        }
    }
}

/// Whether `name` may be an `env` output's variable: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_variable(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The `json` format's document; fields in this order.
#[derive(Serialize)]
struct JsonOutput<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    expires_in: u64,
    scope: Option<&'a str>,
    /// Only when the server named one (a token exchange): older outputs stay byte for byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'a str>,
}

/// The exact bytes of `token` in `format` (see SPEC "Output formats"):
/// - `token`: the bare access token, no newline;
/// - `env`: `VARIABLE=<token>\nVARIABLE_EXPIRES_AT=<unix seconds>\n`;
/// - `header`: `Authorization: Bearer <token>\n`;
/// - `json`: `{"access_token","token_type","expires_at","expires_in","scope"}` and a newline,
///   with `expires_in` the token's whole lifetime (`expires_at - issued_at`) in seconds, and
///   `scope` null when the server named none, then `issued_token_type` only when the server
///   named one (RFC 8693 token exchange);
/// - `template`: see [`Template`].
///
/// The token must already be a valid RFC 6750 `b64token`: that is what makes `env` and
/// `header` output safe for a shell and a header line. In `env`, a token that begins with `~`
/// is single-quoted (`V='~…'`), since `sh` would tilde-expand it; `sh` and systemd's
/// `EnvironmentFile=` both strip the quotes. Times outside 1970 … 9999 are clamped.
///
/// `client` is the client's name, which a template may print.
pub fn render(format: &Format, token: &Token, client: &str) -> Vec<u8> {
    let access_token = token.access_token.expose();
    match format {
        Format::Token => access_token.as_bytes().to_vec(),
        Format::Env { variable } => {
            let expires_at = unix_seconds(token.expires_at);
            let value = if access_token.starts_with('~') {
                format!("'{access_token}'")
            } else {
                access_token.to_owned()
            };
            format!("{variable}={value}\n{variable}_EXPIRES_AT={expires_at}\n").into_bytes()
        }
        Format::Header => format!("Authorization: Bearer {access_token}\n").into_bytes(),
        Format::Json => {
            let document = JsonOutput {
                access_token,
                token_type: &token.token_type,
                expires_at: rfc3339(token.expires_at),
                expires_in: token
                    .expires_at
                    .duration_since(token.issued_at)
                    .map_or(0, |lifetime| lifetime.as_secs()),
                scope: token.scope.as_deref(),
                issued_token_type: token.issued_token_type.as_deref(),
            };
            // A struct of strings and integers always serializes; this cannot fail.
            let mut bytes = serde_json::to_vec(&document)
                .expect("serializing strings and integers into memory cannot fail");
            bytes.push(b'\n');
            bytes
        }
        Format::Template(template) => template.render(token, client).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::atomic::write_atomic;
    use super::template::LATEST_FORMATTABLE;

    /// 2026-11-29T03:15:50Z.
    const EXPIRES_AT: u64 = 1_795_922_150;

    const CLIENT: &str = "tasklist";

    fn token(access_token: &str, scope: Option<&str>) -> Token {
        crate::token::sample(access_token, scope, EXPIRES_AT)
    }

    fn rendered(format: &Format, token: &Token) -> String {
        String::from_utf8(render(format, token, CLIENT)).expect("UTF-8")
    }

    fn template(text: &str) -> Format {
        Format::Template(Template::parse(text).expect("valid template"))
    }

    #[test]
    fn token_format_is_the_bare_token() {
        let with_scope = token("abc.def-ghi", Some("tasks:read"));
        assert_eq!(rendered(&Format::Token, &with_scope), "abc.def-ghi");
        assert_eq!(rendered(&Format::Token, &token("xyz", None)), "xyz");
    }

    #[test]
    fn env_format_is_two_assignments() {
        let format = Format::Env {
            variable: "TASKLIST_TOKEN".to_owned(),
        };
        let expected = "TASKLIST_TOKEN=abc.def\nTASKLIST_TOKEN_EXPIRES_AT=1795922150\n";
        assert_eq!(rendered(&format, &token("abc.def", Some("a b"))), expected);
        assert_eq!(rendered(&format, &token("abc.def", None)), expected);
    }

    #[test]
    fn env_format_quotes_a_leading_tilde() {
        let format = Format::Env {
            variable: "T".to_owned(),
        };
        assert_eq!(
            rendered(&format, &token("~root", None)),
            "T='~root'\nT_EXPIRES_AT=1795922150\n"
        );
        assert_eq!(
            rendered(&format, &token("a~b", None)),
            "T=a~b\nT_EXPIRES_AT=1795922150\n"
        );
    }

    #[test]
    fn header_format_is_one_header_line() {
        let expected = "Authorization: Bearer abc/def+==\n";
        let mut lower_case = token("abc/def+==", None);
        lower_case.token_type = "bearer".to_owned();
        assert_eq!(rendered(&Format::Header, &lower_case), expected);
        assert_eq!(
            rendered(&Format::Header, &token("abc/def+==", Some("x"))),
            expected
        );
    }

    #[test]
    fn json_format_has_fixed_keys_in_order() {
        assert_eq!(
            rendered(&Format::Json, &token("abc", Some("tasks:read tasks:write"))),
            "{\"access_token\":\"abc\",\"token_type\":\"Bearer\",\
             \"expires_at\":\"2026-11-29T03:15:50Z\",\"expires_in\":300,\
             \"scope\":\"tasks:read tasks:write\"}\n"
        );
        assert_eq!(
            rendered(&Format::Json, &token("abc", None)),
            "{\"access_token\":\"abc\",\"token_type\":\"Bearer\",\
             \"expires_at\":\"2026-11-29T03:15:50Z\",\"expires_in\":300,\"scope\":null}\n"
        );
    }

    #[test]
    fn json_format_escapes_strings() {
        let json = rendered(&Format::Json, &token("abc", Some("a\"b\\c")));
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(value["scope"], "a\"b\\c");
    }

    #[test]
    fn times_outside_rfc3339_are_clamped_not_panicking() {
        let mut ancient = token("abc", None);
        ancient.issued_at = UNIX_EPOCH - Duration::from_secs(100);
        ancient.expires_at = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(
            rendered(&Format::Json, &ancient),
            "{\"access_token\":\"abc\",\"token_type\":\"Bearer\",\
             \"expires_at\":\"1970-01-01T00:00:00Z\",\"expires_in\":90,\"scope\":null}\n"
        );
        let mut far = token("abc", None);
        far.expires_at = UNIX_EPOCH + Duration::from_secs(u64::MAX / 2);
        assert!(rendered(&Format::Json, &far).contains("\"9999-12-31T23:59:59Z\""));
        assert_eq!(
            rendered(&template("{{ expires_at_unix }}"), &far),
            "253402300799"
        );
        let mut backwards = token("abc", None);
        backwards.issued_at = backwards.expires_at + Duration::from_secs(1);
        assert!(rendered(&Format::Json, &backwards).contains("\"expires_in\":0,"));
    }

    #[test]
    fn format_names() {
        let names: Vec<_> = [
            Format::Token,
            Format::Env {
                variable: "X".to_owned(),
            },
            Format::Header,
            Format::Json,
            template("x"),
        ]
        .iter()
        .map(Format::name)
        .collect();
        assert_eq!(names, ["token", "env", "header", "json", "template"]);
    }

    #[test]
    fn env_variable_names() {
        for good in ["A", "_", "TASKLIST_TOKEN", "a1_b2", "_9"] {
            assert!(is_env_variable(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "É", "A$"] {
            assert!(!is_env_variable(bad), "{bad}");
        }
    }

    /// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
    const B64TOKEN: &str = "[A-Za-z0-9._~+/-]{1,64}={0,3}";

    proptest! {
        #[test]
        fn env_output_is_exactly_two_plain_assignments(
            access_token in B64TOKEN,
            variable in "[A-Za-z_][A-Za-z0-9_]{0,20}",
            expires_at in 0u64..=LATEST_FORMATTABLE.as_secs(),
        ) {
            prop_assert!(is_env_variable(&variable));
            let mut issued = token(&access_token, None);
            issued.expires_at = UNIX_EPOCH + Duration::from_secs(expires_at);
            let format = Format::Env { variable: variable.clone() };
            let text = String::from_utf8(render(&format, &issued, CLIENT)).expect("UTF-8");
            let lines: Vec<&str> = text.split_terminator('\n').collect();
            prop_assert!(text.ends_with('\n'));
            prop_assert_eq!(lines.len(), 2);

            let value = lines[0].strip_prefix(&format!("{variable}=")).expect("NAME=");
            let unquoted = value
                .strip_prefix('\'')
                .and_then(|rest| rest.strip_suffix('\''))
                .unwrap_or(value);
            prop_assert_eq!(unquoted, access_token.as_str());
            // Quoted exactly when `sh` would otherwise tilde-expand; nothing else is special.
            prop_assert_eq!(value != unquoted, access_token.starts_with('~'));
            prop_assert!(unquoted.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)));

            let expiry = lines[1]
                .strip_prefix(&format!("{variable}_EXPIRES_AT="))
                .expect("NAME_EXPIRES_AT=");
            prop_assert_eq!(expiry, expires_at.to_string());
        }
    }

    /// The same, proven by `sh` itself: sourcing the file sets exactly the token.
    #[test]
    fn sh_reads_back_exactly_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.env");
        let tokens = [
            "~",
            "~+",
            "~-",
            "~root",
            "~/x",
            "a~b",
            "abc",
            "a.b-c_d~e+f/g==",
            "/etc",
            "+1",
            "-x",
        ];
        for access_token in tokens {
            let format = Format::Env {
                variable: "T_TOKEN".to_owned(),
            };
            write_atomic(
                &path,
                &render(&format, &token(access_token, None), CLIENT),
                0o600,
            )
            .expect("write");
            let output = Command::new("sh")
                .arg("-c")
                .arg(". \"$1\" && printf '%s|%s' \"$T_TOKEN\" \"$T_TOKEN_EXPIRES_AT\"")
                .arg("sh")
                .arg(&path)
                .env("HOME", "/home-of-test")
                .output()
                .expect("run sh");
            assert!(output.status.success(), "{access_token}: {output:?}");
            assert_eq!(
                String::from_utf8_lossy(&output.stdout),
                format!("{access_token}|{EXPIRES_AT}"),
                "{access_token}"
            );
        }
    }
}
