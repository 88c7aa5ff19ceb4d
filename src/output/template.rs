//! Templates: a `template` output's text parsed into literals and placeholders, and rendered
//! with a token's values; how those values print (times clamped to what RFC 3339 can express)
//! is defined here for every format. It must not do I/O or read the clock.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::Clock;
use crate::token::Token;

/// The names a template may use, in the order the docs list them.
const PLACEHOLDERS: [&str; 7] = [
    "access_token",
    "token_type",
    "expires_at",
    "expires_at_unix",
    "scope",
    "issued_token_type",
    "client",
];

/// A parsed `template`: literal text and placeholders.
///
/// Placeholders are `{{ NAME }}` or `{{ NAME | json }}`, with optional whitespace inside the
/// braces; NAME is one of `PLACEHOLDERS`:
/// - `access_token`, `token_type`, `client`: as they are;
/// - `expires_at`: RFC 3339 in UTC to the second (`2026-11-29T03:15:50Z`);
/// - `expires_at_unix`: Unix seconds;
/// - `scope`: the granted scope, or the empty string when the server named none;
/// - `issued_token_type`: RFC 8693's type of the issued token, or the empty string when the
///   server named none (it does only for a token exchange).
///
/// The `json` filter renders the value as a complete JSON string literal, quotes included
/// (`{{ access_token | json }}` → `"abc"`), so `"auth": {{ access_token | json }}` is valid
/// JSON whatever the value; `expires_at_unix | json` is a string too (`"1795922150"`).
/// There is no escape for a literal `{{`; a lone `}}` is literal text.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Placeholder { field: Field, json: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    AccessToken,
    TokenType,
    ExpiresAt,
    ExpiresAtUnix,
    Scope,
    IssuedTokenType,
    Client,
}

impl Field {
    const ALL: [Self; 7] = [
        Self::AccessToken,
        Self::TokenType,
        Self::ExpiresAt,
        Self::ExpiresAtUnix,
        Self::Scope,
        Self::IssuedTokenType,
        Self::Client,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::TokenType => "token_type",
            Self::ExpiresAt => "expires_at",
            Self::ExpiresAtUnix => "expires_at_unix",
            Self::Scope => "scope",
            Self::IssuedTokenType => "issued_token_type",
            Self::Client => "client",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|field| field.name() == name)
    }
}

impl Template {
    /// Parses template text. An unclosed `{{`, an unknown placeholder or an unknown filter is
    /// an error naming it, where it is (line and column within the template), and what is
    /// allowed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let start = text.len() - rest.len() + open;
            let after_open = &rest[open + 2..];
            let Some(close) = after_open.find("}}") else {
                return Err(format!(
                    "unclosed \"{{{{\" at {}: expected \"}}}}\" to end the placeholder",
                    position(text, start)
                ));
            };
            let inner = &after_open[..close];
            parts.push(parse_placeholder(inner).map_err(|problem| {
                format!(
                    "{problem} in \"{{{{{inner}}}}}\" at {}",
                    position(text, start)
                )
            })?);
            rest = &after_open[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The text with every placeholder replaced by its value for `token` and `client`.
    pub(super) fn render(&self, token: &Token, client: &str) -> String {
        let values = Values { token, client };
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder { field, json } => {
                    let value = values.field(*field);
                    if *json {
                        out.push_str(&json_string(&value));
                    } else {
                        out.push_str(&value);
                    }
                }
            }
        }
        out
    }
}

fn parse_placeholder(inner: &str) -> Result<Part, String> {
    let (name, filter) = match inner.split_once('|') {
        Some((name, filter)) => (name.trim(), Some(filter.trim())),
        None => (inner.trim(), None),
    };
    let json = match filter {
        None => false,
        Some("json") => true,
        Some(other) => {
            return Err(format!(
                "unknown filter {other:?}: the only filter is \"json\""
            ));
        }
    };
    match Field::parse(name) {
        Some(field) => Ok(Part::Placeholder { field, json }),
        None => Err(format!(
            "unknown placeholder {name:?}: expected one of {}, optionally followed by \"| json\"",
            PLACEHOLDERS.join(", ")
        )),
    }
}

/// "line L, column C of the template", counting from 1; columns count characters.
fn position(text: &str, byte: usize) -> String {
    let before = &text[..byte];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    format!("line {line}, column {column} of the template")
}

/// The token's values as the formats print them.
struct Values<'a> {
    token: &'a Token,
    client: &'a str,
}

impl Values<'_> {
    fn field(&self, field: Field) -> Cow<'_, str> {
        match field {
            Field::AccessToken => self.token.access_token.expose().into(),
            Field::TokenType => self.token.token_type.as_str().into(),
            Field::ExpiresAt => rfc3339(self.token.expires_at).into(),
            Field::ExpiresAtUnix => unix_seconds(self.token.expires_at).to_string().into(),
            Field::Scope => self.token.scope.as_deref().unwrap_or("").into(),
            Field::IssuedTokenType => self.token.issued_token_type.as_deref().unwrap_or("").into(),
            Field::Client => self.client.into(),
        }
    }
}

/// The latest instant `humantime` can format (9999-12-31T23:59:59Z).
pub(super) const LATEST_FORMATTABLE: Duration = Duration::from_secs(253_402_300_799);

/// Unix seconds of `time`, clamped to what RFC 3339 (and `humantime`, which panics outside it)
/// can express: the Unix epoch … the end of year 9999.
pub(super) fn unix_seconds(time: SystemTime) -> u64 {
    Clock::unix_seconds(time).min(LATEST_FORMATTABLE.as_secs())
}

/// RFC 3339 in UTC to the second, clamped as [`unix_seconds`] is.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_seconds(time)))
        .to_string()
}

/// `value` as a JSON string literal, quotes included.
fn json_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-29T03:15:50Z.
    const EXPIRES_AT: u64 = 1_795_922_150;

    fn token(access_token: &str, scope: Option<&str>) -> Token {
        crate::token::sample(access_token, scope, EXPIRES_AT)
    }

    fn rendered(template: &Template, token: &Token) -> String {
        template.render(token, "tasklist")
    }

    fn template(text: &str) -> Template {
        Template::parse(text).expect("valid template")
    }

    #[test]
    fn template_renders_every_placeholder() {
        let format = template(
            "{{ access_token }}|{{token_type}}|{{  expires_at  }}|{{ expires_at_unix }}|\
             {{ scope }}|{{ client }}",
        );
        assert_eq!(
            rendered(&format, &token("abc", Some("s1 s2"))),
            "abc|Bearer|2026-11-29T03:15:50Z|1795922150|s1 s2|tasklist"
        );
        assert_eq!(
            rendered(&format, &token("abc", None)),
            "abc|Bearer|2026-11-29T03:15:50Z|1795922150||tasklist"
        );
    }

    #[test]
    fn template_keeps_literal_text_exactly() {
        let netrc = "machine api.example.com\n  login x\n  password {{ access_token }}\n";
        assert_eq!(
            rendered(&template(netrc), &token("abc", None)),
            "machine api.example.com\n  login x\n  password abc\n"
        );
        assert_eq!(rendered(&template(""), &token("abc", None)), "");
        assert_eq!(
            rendered(&template("a }} b {"), &token("abc", None)),
            "a }} b {"
        );
    }

    #[test]
    fn json_filter_renders_a_quoted_escaped_string() {
        let format = template(
            "{\"auth\": {{ access_token | json }}, \"scope\": {{scope|json}}, \
             \"exp\": {{ expires_at_unix | json }}, \"client\": {{ client | json }}}",
        );
        let scoped = token("abc", Some("say \"hi\" \\ \u{1}"));
        let text = rendered(&format, &scoped);
        assert_eq!(
            text,
            "{\"auth\": \"abc\", \"scope\": \"say \\\"hi\\\" \\\\ \\u0001\", \
             \"exp\": \"1795922150\", \"client\": \"tasklist\"}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["scope"], "say \"hi\" \\ \u{1}");
        assert_eq!(
            rendered(&template("{{ scope | json }}"), &token("abc", None)),
            "\"\""
        );
    }

    #[test]
    fn template_lists_its_placeholders() {
        let parsed =
            Template::parse("{{ client }} {{ access_token | json }} {{ client }}").expect("valid");
        let placeholders: Vec<&str> = parsed
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::Placeholder { field, .. } => Some(field.name()),
                Part::Literal(_) => None,
            })
            .collect();
        assert_eq!(placeholders, ["client", "access_token", "client"]);
    }

    #[test]
    fn template_errors_name_the_problem_and_what_is_allowed() {
        let cases = [
            (
                "x {{ acces_token }}",
                "unknown placeholder \"acces_token\": expected one of access_token, \
                 token_type, expires_at, expires_at_unix, scope, issued_token_type, client, \
                 optionally followed by \"| json\" in \"{{ acces_token }}\" at line 1, column 3 of the template",
            ),
            (
                "a\nbé{{ scope | yaml }}",
                "unknown filter \"yaml\": the only filter is \"json\" in \
                 \"{{ scope | yaml }}\" at line 2, column 3 of the template",
            ),
            (
                "{{ scope | json | json }}",
                "unknown filter \"json | json\": the only filter is \"json\" in \
                 \"{{ scope | json | json }}\" at line 1, column 1 of the template",
            ),
            (
                "{{}}",
                "unknown placeholder \"\": expected one of access_token, token_type, \
                 expires_at, expires_at_unix, scope, issued_token_type, client, optionally \
                 followed by \"| json\" in \"{{}}\" at line 1, column 1 of the template",
            ),
            (
                "ok {{ scope }} {{ access_token",
                "unclosed \"{{\" at line 1, column 16 of the template: expected \"}}\" \
                 to end the placeholder",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                Template::parse(text).as_ref().map(|_| ()),
                Err(&expected.to_owned()),
                "{text}"
            );
        }
    }
}
