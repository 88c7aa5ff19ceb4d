//! The validator: the spanned TOML tree → [`Config`], every problem reported with its place,
//! one section per file (this one: [`Config::load`] and [`Config::parse`], the whole file, the
//! typed getters, `${VAR}` expansion and paths). It reads the files a config names, to check
//! them, and nothing else: no network, no clock.

mod agent;
mod client;
mod credentials;
mod grant;
mod on_refresh;
mod output;

use std::env::VarError;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};
use url::Url;

use super::diagnostic::{ConfigError, Diagnostic, LineIndex, Problems};
use super::url::check_url_scheme;
use super::{Agent, ClientName, ClientSpec, Config};
use crate::files;

type Span = Range<usize>;
type Value<'i> = Spanned<DeValue<'i>>;

impl Config {
    /// Reads and validates the file at `path`, expanding `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = files::read_text(path, files::Kind::Config).map_err(|error| ConfigError {
            path: path.to_owned(),
            diagnostics: vec![Diagnostic {
                location: None,
                key: String::new(),
                message: error.without_path(),
            }],
            more: 0,
        })?;
        // Parsed on a thread of its own, copied here, and freed there: the parse's scratch
        // memory (the TOML tree and its tokens, ~25 bytes for each byte of text) then comes and
        // goes in that thread's malloc arena instead of leaving this one in holes around the
        // config (BENCHMARKS.md, memory per client).
        let parse = || Self::parse(path, &text, &|name| std::env::var(name));
        std::thread::scope(|scope| {
            let (parsed_tx, parsed) = std::sync::mpsc::channel();
            let (used_tx, used) = std::sync::mpsc::channel::<Config>();
            let spawned = std::thread::Builder::new()
                .name("bearerd-parse".to_owned())
                .spawn_scoped(scope, move || {
                    let _ = parsed_tx.send(parse());
                    drop(used.recv());
                });
            if spawned.is_err() {
                return parse();
            }
            match parsed.recv() {
                Ok(Ok(config)) => {
                    let copy = config.copied();
                    let _ = used_tx.send(config);
                    Ok(copy)
                }
                Ok(Err(error)) => Err(error),
                Err(_) => parse(),
            }
        })
    }

    /// A copy that shares no allocation with `self`.
    fn copied(&self) -> Config {
        let clients = self
            .clients
            .iter()
            .map(|client| {
                let mut copy = ClientSpec::clone(client);
                copy.name = client.name.copied();
                Arc::new(copy)
            })
            .collect();
        Config {
            path: self.path.clone(),
            agent: self.agent.clone(),
            clients,
        }
    }

    /// Validates `text` as the content of `path`. Relative paths in it are taken relative to
    /// the directory of `path`. Files it names (secrets, templates) are read to validate them.
    /// `env` answers as [`std::env::var`] does, so that a variable that is set but not UTF-8
    /// is told apart from one that is not set.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Result<String, VarError>,
    ) -> Result<Config, ConfigError> {
        let mut checker = Checker {
            lines: LineIndex::new(text),
            base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            env,
            diagnostics: Problems::default(),
        };
        let config = match DeTable::parse(text) {
            Ok(root) => checker.config(path, root.get_ref()),
            Err(error) => {
                let location = error.span().map(|span| checker.lines.location(span.start));
                checker.diagnostics.push(Diagnostic {
                    location,
                    key: String::new(),
                    message: format!("invalid TOML: {}", error.message().trim_end()),
                });
                None
            }
        };
        match config {
            Some(config) if checker.diagnostics.is_empty() => Ok(config),
            _ => {
                let more = checker.diagnostics.len() - checker.diagnostics.kept.len();
                Err(ConfigError {
                    path: path.to_owned(),
                    diagnostics: checker.diagnostics.kept,
                    more,
                })
            }
        }
    }
}

struct Checker<'a> {
    lines: LineIndex<'a>,
    base_dir: PathBuf,
    env: &'a dyn Fn(&str) -> Result<String, VarError>,
    diagnostics: Problems,
}

impl Checker<'_> {
    fn error(&mut self, span: &Span, key: &str, message: impl Into<String>) {
        if !self.diagnostics.keeps_next() {
            self.diagnostics.found += 1;
            return;
        }
        let location = Some(self.lines.location(span.start));
        self.diagnostics.push(Diagnostic {
            location,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn config(&mut self, path: &Path, root: &DeTable<'_>) -> Option<Config> {
        self.unknown_keys(root, "", &["agent", "clients"]);
        let agent = match root.get("agent") {
            Some(value) => match self.as_table(value, "agent") {
                Some(table) => self.agent(table, value.span()),
                None => None,
            },
            None => Some(Agent::default()),
        };
        let mut clients = Vec::new();
        if let Some(value) = root.get("clients")
            && let Some(table) = self.as_table(value, "clients")
        {
            for (name, value) in table {
                let key = format!("clients.{}", name.get_ref());
                let client_name = match ClientName::parse(name.get_ref()) {
                    Ok(client_name) => client_name,
                    Err(message) => {
                        self.error(&name.span(), &key, message);
                        continue;
                    }
                };
                if let Some(table) = self.as_table(value, &key)
                    && let Some(client) = self.client(client_name, table, value.span(), &key)
                {
                    clients.push(Arc::new(client));
                }
            }
        }
        self.duplicate_paths(&clients, root);
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        // The config lives as long as the daemon: give back the growth slack (with 10,000
        // clients it was 11 MB of a 66 MB heap, BENCHMARKS.md).
        clients.shrink_to_fit();
        Some(Config {
            path: path.to_owned(),
            agent: agent?,
            clients,
        })
    }

    // --- typed getters: each reports its own type error and returns None ---

    fn unknown_keys(&mut self, table: &DeTable<'_>, prefix: &str, allowed: &[&str]) {
        for key in table.keys() {
            let name = key.get_ref();
            if !allowed.contains(&name.as_ref()) {
                let full = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}.{name}")
                };
                self.error(
                    &key.span(),
                    &full,
                    format!("unknown key; expected one of: {}", allowed.join(", ")),
                );
            }
        }
    }

    fn as_table<'t, 'i>(&mut self, value: &'t Value<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                self.error(
                    &value.span(),
                    key,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn expect_string(&mut self, value: &Value<'_>, key: &str) -> Option<String> {
        match value.get_ref() {
            DeValue::String(text) => self.expand(text, &value.span(), key),
            other => {
                self.error(
                    &value.span(),
                    key,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<(String, Span)> {
        let value = table.get(key)?;
        let full = format!("{prefix}.{key}");
        self.expect_string(value, &full)
            .map(|text| (text, value.span()))
    }

    fn non_empty_string(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<String> {
        let (text, span) = self.string(table, prefix, key)?;
        if text.is_empty() {
            self.error(
                &span,
                &format!("{prefix}.{key}"),
                "is empty; remove the key or give it a value",
            );
            return None;
        }
        Some(text)
    }

    fn required_string(
        &mut self,
        table: &DeTable<'_>,
        table_span: &Span,
        prefix: &str,
        key: &str,
    ) -> Option<String> {
        if !table.contains_key(key) {
            self.error(table_span, prefix, format!("missing {key}"));
            return None;
        }
        self.non_empty_string(table, prefix, key)
    }

    fn string_array(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        key: &str,
    ) -> Option<(Vec<String>, Span)> {
        let value = table.get(key)?;
        let full = format!("{prefix}.{key}");
        let DeValue::Array(array) = value.get_ref() else {
            self.error(
                &value.span(),
                &full,
                format!(
                    "expected an array of strings, found {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        let mut items = Vec::new();
        for (index, item) in array.iter().enumerate() {
            items.push(self.expect_string(item, &format!("{full}[{index}]"))?);
        }
        Some((items, value.span()))
    }

    fn boolean(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<bool> {
        let value = table.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(flag) => Some(*flag),
            other => {
                self.error(
                    &value.span(),
                    &format!("{prefix}.{key}"),
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn integer(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<(i64, Span)> {
        let value = table.get(key)?;
        match value.get_ref() {
            DeValue::Integer(integer) => {
                match i64::from_str_radix(integer.as_str(), integer.radix()) {
                    Ok(number) => Some((number, value.span())),
                    Err(_) => {
                        self.error(
                            &value.span(),
                            &format!("{prefix}.{key}"),
                            "integer out of range",
                        );
                        None
                    }
                }
            }
            other => {
                self.error(
                    &value.span(),
                    &format!("{prefix}.{key}"),
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn float(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<(f64, Span)> {
        let value = table.get(key)?;
        let number = match value.get_ref() {
            DeValue::Float(float) => float.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(integer) => i64::from_str_radix(integer.as_str(), integer.radix())
                .ok()
                .map(|n| n as f64),
            _ => None,
        };
        match number {
            Some(number) => Some((number, value.span())),
            None => {
                self.error(
                    &value.span(),
                    &format!("{prefix}.{key}"),
                    format!("expected a number, found {}", value.get_ref().type_str()),
                );
                None
            }
        }
    }

    /// A duration string ("10s", "5m"); no duration bearerd reads may be zero.
    fn duration(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> Option<Duration> {
        let value = table.get(key)?;
        let full = format!("{prefix}.{key}");
        let DeValue::String(text) = value.get_ref() else {
            self.error(
                &value.span(),
                &full,
                format!(
                    "expected a duration string such as \"10s\" or \"5m\", found {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        let text = self.expand(text, &value.span(), &full)?;
        match humantime::parse_duration(&text) {
            Ok(duration) if duration.is_zero() => {
                self.error(
                    &value.span(),
                    &full,
                    "expected a duration greater than zero",
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(error) => {
                self.error(
                    &value.span(),
                    &full,
                    format!(
                        "expected a duration such as \"10s\" or \"5m\", found {text:?} ({error})"
                    ),
                );
                None
            }
        }
    }

    fn url(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        key: &str,
        allow_insecure_http: bool,
    ) -> Option<Url> {
        let (text, span) = self.string(table, prefix, key)?;
        let full = format!("{prefix}.{key}");
        let url = match Url::parse(&text) {
            Ok(url) => url,
            Err(error) => {
                self.error(
                    &span,
                    &full,
                    format!("expected a URL, found {text:?} ({error})"),
                );
                return None;
            }
        };
        if let Err(message) = check_url_scheme(&url, allow_insecure_http) {
            self.error(&span, &full, message);
            return None;
        }
        Some(url)
    }

    /// A file that is read at use (a key or a certificate): read now too, so that `check`
    /// catches a missing, unreadable or oversized one.
    fn existing_file(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        key: &str,
        kind: files::Kind,
    ) -> Option<PathBuf> {
        let (text, span) = self.string(table, prefix, key)?;
        let path = self.resolve(&text);
        if let Err(error) = files::read(&path, kind) {
            self.error(&span, &format!("{prefix}.{key}"), error.to_string());
            return None;
        }
        Some(path)
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Expands `${VAR}`; `$${` is a literal `${`.
    fn expand(&mut self, text: &str, span: &Span, key: &str) -> Option<String> {
        match expand_env(text, self.env) {
            Ok(expanded) => Some(expanded),
            Err(message) => {
                self.error(span, key, message);
                None
            }
        }
    }
}

/// `${VAR}` expansion from `env`; an unset variable is an error, `$${` a literal `${`.
fn expand_env(
    text: &str,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find('$') {
        out.push_str(&rest[..index]);
        let after = &rest[index + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err("unclosed ${ in string (write $${ for a literal ${)".to_owned());
            };
            let name = &body[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("invalid variable name in ${{{name}}}"));
            }
            match env(name) {
                Ok(value) => out.push_str(&value),
                Err(VarError::NotPresent) => {
                    return Err(format!("environment variable {name} is not set"));
                }
                // The value may be a secret: never shown, not even in part.
                Err(VarError::NotUnicode(_)) => {
                    return Err(format!(
                        "environment variable {name} is set but is not valid UTF-8"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn key_span(table: &DeTable<'_>, key: &str) -> Option<Span> {
    table.get_key_value(key).map(|(key, _)| key.span())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::{TASKLIST, env, errors};

    #[test]
    fn variables_expand_everywhere_and_unset_ones_are_errors() {
        let expand = |text: &str| expand_env(text, &env);
        assert_eq!(
            expand("a${TASKLIST_SECRET}b").as_deref(),
            Ok("as3cr3t +/%:&= xb")
        );
        assert_eq!(expand("${EMPTY}").as_deref(), Ok(""));
        assert_eq!(expand("$${LITERAL} $5").as_deref(), Ok("${LITERAL} $5"));
        assert_eq!(
            expand("${NOPE}"),
            Err("environment variable NOPE is not set".to_owned())
        );
        assert_eq!(
            expand("${NOT_UTF8}"),
            Err("environment variable NOT_UTF8 is set but is not valid UTF-8".to_owned())
        );
        assert!(expand("${OPEN").is_err());
        assert!(expand("${1BAD}").is_err());
    }

    #[test]
    fn an_unset_variable_is_located() {
        let lines = errors(&TASKLIST.replace("TASKLIST_SECRET", "MISSING_SECRET"));
        assert_eq!(
            lines,
            vec![
                "/etc/bearerd/bearerd.toml:12:17: clients.tasklist.client_secret: environment \
                 variable MISSING_SECRET is not set"
            ]
        );
    }
}
