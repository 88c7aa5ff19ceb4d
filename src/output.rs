//! Token files: [`render`] turns a token into a format's exact bytes (pure: no I/O, no clock),
//! and [`write_atomic`] / [`write_if_changed`] put bytes on disk so that a reader sees the old
//! complete file or the new complete file, never a mix, with exactly the configured mode.
//! It must not fetch, retry, schedule or log, and no error it returns contains a token.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::ClientName;
use crate::oauth::Token;

/// One `[[clients.NAME.output]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSpec {
    pub path: PathBuf,
    pub format: Format,
    /// Permission bits of the file, exactly (the umask does not apply).
    pub mode: u32,
}

impl OutputSpec {
    /// Renders `token` and writes it unless the file already holds exactly these bytes with
    /// this mode. Returns whether the file was (re)written. Blocking: run it where
    /// cancellation cannot interrupt it (e.g. `spawn_blocking`).
    pub fn write(&self, token: &Token, client: &ClientName) -> Result<bool, WriteError> {
        write_if_changed(&self.path, &render(&self.format, token, client), self.mode)
    }
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
    pub fn name(&self) -> &'static str {
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

/// The names a template may use, in the order the docs list them.
pub const PLACEHOLDERS: [&str; 6] = [
    "access_token",
    "token_type",
    "expires_at",
    "expires_at_unix",
    "scope",
    "client",
];

/// A parsed `template`: literal text and placeholders.
///
/// Placeholders are `{{ NAME }}` or `{{ NAME | json }}`, with optional whitespace inside the
/// braces; NAME is one of [`PLACEHOLDERS`]:
/// - `access_token`, `token_type`, `client`: as they are;
/// - `expires_at`: RFC 3339 in UTC to the second (`2026-11-29T03:15:50Z`);
/// - `expires_at_unix`: Unix seconds;
/// - `scope`: the granted scope, or the empty string when the server named none.
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
    Client,
}

impl Field {
    const ALL: [Self; 6] = [
        Self::AccessToken,
        Self::TokenType,
        Self::ExpiresAt,
        Self::ExpiresAtUnix,
        Self::Scope,
        Self::Client,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::AccessToken => "access_token",
            Self::TokenType => "token_type",
            Self::ExpiresAt => "expires_at",
            Self::ExpiresAtUnix => "expires_at_unix",
            Self::Scope => "scope",
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

    /// The placeholder names the template uses, in order of appearance (repeats included).
    pub fn placeholders(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.parts.iter().filter_map(|part| match part {
            Part::Placeholder { field, .. } => Some(field.name()),
            Part::Literal(_) => None,
        })
    }

    fn render(&self, values: &Values<'_>) -> String {
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
    client: &'a ClientName,
}

impl Values<'_> {
    fn field(&self, field: Field) -> std::borrow::Cow<'_, str> {
        match field {
            Field::AccessToken => self.token.access_token.expose().into(),
            Field::TokenType => self.token.token_type.as_str().into(),
            Field::ExpiresAt => rfc3339(self.token.expires_at).into(),
            Field::ExpiresAtUnix => unix_seconds(self.token.expires_at).to_string().into(),
            Field::Scope => self.token.scope.as_deref().unwrap_or("").into(),
            Field::Client => self.client.as_str().into(),
        }
    }
}

/// The latest instant `humantime` can format (9999-12-31T23:59:59Z).
const LATEST_FORMATTABLE: Duration = Duration::from_secs(253_402_300_799);

/// `time` clamped to what RFC 3339 (and `humantime`, which panics outside it) can express:
/// the Unix epoch … the end of year 9999, whole seconds.
fn clamp_time(time: SystemTime) -> Duration {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Duration::from_secs(since_epoch.min(LATEST_FORMATTABLE).as_secs())
}

fn unix_seconds(time: SystemTime) -> u64 {
    clamp_time(time).as_secs()
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + clamp_time(time)).to_string()
}

/// `value` as a JSON string literal, quotes included.
fn json_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

/// The `json` format's document; fields in this order.
#[derive(Serialize)]
struct JsonOutput<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    expires_in: u64,
    scope: Option<&'a str>,
}

/// The exact bytes of `token` in `format` (see SPEC "Output formats"):
/// - `token`: the bare access token, no newline;
/// - `env`: `VARIABLE=<token>\nVARIABLE_EXPIRES_AT=<unix seconds>\n`;
/// - `header`: `Authorization: Bearer <token>\n`;
/// - `json`: `{"access_token","token_type","expires_at","expires_in","scope"}` and a newline,
///   with `expires_in` the token's whole lifetime (`expires_at - issued_at`) in seconds, and
///   `scope` null when the server named none;
/// - `template`: see [`Template`].
///
/// The token must already be a valid RFC 6750 `b64token`: that is what makes `env` and
/// `header` output safe for a shell and a header line. In `env`, a token that begins with `~`
/// is single-quoted (`V='~…'`), since `sh` would tilde-expand it; `sh` and systemd's
/// `EnvironmentFile=` both strip the quotes. Times outside 1970 … 9999 are clamped.
pub fn render(format: &Format, token: &Token, client: &ClientName) -> Vec<u8> {
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
            };
            // A struct of strings and integers always serializes; this cannot fail.
            let mut bytes = serde_json::to_vec(&document)
                .expect("serializing strings and integers into memory cannot fail");
            bytes.push(b'\n');
            bytes
        }
        Format::Template(template) => template.render(&Values { token, client }).into_bytes(),
    }
}

/// A failed file operation: what was being done, to which path, and the OS's reason.
/// It never contains file contents.
#[derive(Debug)]
pub struct WriteError {
    action: &'static str,
    path: PathBuf,
    error: io::Error,
}

impl WriteError {
    fn new(action: &'static str, path: &Path, error: io::Error) -> Self {
        Self {
            action,
            path: path.to_owned(),
            error,
        }
    }

    /// The path the message names (the output, or the directory being created or synced).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn io_error(&self) -> &io::Error {
        &self.error
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.action,
            self.path.display(),
            self.error
        )
    }
}

impl std::error::Error for WriteError {}

/// What marks a temporary file as ours: `.<file name>` + this + 16 lower-case hex digits.
pub const TEMP_MARKER: &str = ".bearerd-tmp-";

const TEMP_SUFFIX_LEN: usize = 16;

/// How many bytes longer a temporary file's name is than the name of the file it replaces.
pub const TEMP_NAME_EXTRA: usize = 1 + TEMP_MARKER.len() + TEMP_SUFFIX_LEN;

/// Whether `name` (a file name, not a path) is one of our temporary files.
pub fn is_temp_file_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    let marker = TEMP_MARKER.as_bytes();
    let Some(stem_and_marker) = name.len().checked_sub(TEMP_SUFFIX_LEN) else {
        return false;
    };
    let (head, suffix) = name.split_at(stem_and_marker);
    name.first() == Some(&b'.')
        && head.len() > 1 + marker.len()
        && head.ends_with(marker)
        && suffix
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn temp_file_name(file_name: &OsStr) -> OsString {
    let mut name = OsString::from(".");
    name.push(file_name);
    name.push(TEMP_MARKER);
    name.push(format!("{:016x}", rand::random::<u64>()));
    name
}

/// The directory `path` is in (`.` for a bare file name) and its file name.
fn split_path(path: &Path) -> Result<(&Path, &OsStr), WriteError> {
    let Some(file_name) = path.file_name() else {
        return Err(WriteError::new(
            "write",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        ));
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok((dir, file_name))
}

/// Replaces the file at `path` with `bytes`, atomically and durably, with permission bits
/// exactly `mode` whatever the umask (SPEC "Writing files"):
/// missing parent directories are created with mode 0700 (less whatever the umask removes);
/// a temporary file (see [`TEMP_MARKER`]) is created in the same directory, owner-only, then
/// set to `mode` before any byte is written, written, fsynced and renamed over `path`; then
/// the directory is fsynced. On failure the temporary file is removed and `path` is untouched
/// (unless only the final directory sync failed: then the new content is in place but may not
/// survive a crash). A symlink at `path` is replaced, not followed.
///
/// Blocking; run it where cancellation cannot interrupt it (e.g. `spawn_blocking`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    write_atomic_as(path, bytes, mode, Durability::Durable)
}

/// Whether a write must survive a power loss, or only be atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file before the rename and the directory after it: token files.
    Durable,
    /// No fsync: still atomic (readers and a SIGKILL see old or new bytes), but a power loss
    /// may lose it. For files that are only a cache, such as the state file, where losing
    /// one costs a refetch; it halves the fsyncs of a refresh.
    Cache,
}

/// [`write_atomic`], with the durability chosen by the caller.
pub fn write_atomic_as(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> Result<(), WriteError> {
    let (dir, file_name) = split_path(path)?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| WriteError::new("create directory", dir, error))?;

    let temp = dir.join(temp_file_name(file_name));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|error| WriteError::new("create a temporary file for", path, error))?;
    if let Err(error) = fill_and_rename(file, &temp, path, bytes, mode, durability) {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    if durability == Durability::Cache {
        return Ok(());
    }
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| WriteError::new("sync directory", dir, error))
}

fn fill_and_rename(
    mut file: File,
    temp: &Path,
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> Result<(), WriteError> {
    // fchmod, not the creation mode: the umask does not apply to it, and it happens before
    // the file holds anything worth reading.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|error| WriteError::new("set the mode of", path, error))?;
    file.write_all(bytes)
        .map_err(|error| WriteError::new("write", path, error))?;
    if durability == Durability::Durable {
        file.sync_all()
            .map_err(|error| WriteError::new("sync", path, error))?;
    }
    drop(file);
    fs::rename(temp, path).map_err(|error| WriteError::new("replace", path, error))
}

/// [`write_atomic`] unless `path` is already a regular file holding exactly `bytes` with
/// permission bits exactly `mode`, so that watchers of an unchanged output stay quiet.
/// Returns whether the file was written.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, WriteError> {
    if holds(path, bytes, mode) {
        return Ok(false);
    }
    write_atomic(path, bytes, mode)?;
    Ok(true)
}

/// Whether `path` is a regular file (not a symlink) with exactly `bytes` and `mode`. Any
/// error reading it counts as "no": writing will then either succeed or say why not.
fn holds(path: &Path, bytes: &[u8], mode: u32) -> bool {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return false;
    };
    if !metadata.is_file()
        || metadata.permissions().mode() & 0o7777 != mode
        || metadata.len() != bytes.len() as u64
    {
        return false;
    }
    let mut current = Vec::with_capacity(bytes.len());
    File::open(path)
        .and_then(|file| file.take(bytes.len() as u64 + 1).read_to_end(&mut current))
        .is_ok_and(|_| current == bytes)
}

/// Removes our temporary files (by [`is_temp_file_name`]) left in `dir` by a crash, and
/// returns their paths. A missing `dir` is not an error. Call it before writes to `dir` start:
/// it cannot tell a crash's leftovers from a write in progress.
pub fn sweep_stale_temps(dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(WriteError::new("list directory", dir, error)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| WriteError::new("list directory", dir, error))?;
        if !is_temp_file_name(&entry.file_name())
            || !entry.file_type().is_ok_and(|kind| kind.is_file())
        {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(WriteError::new("remove stale temporary file", &path, error)),
        }
    }
    removed.sort();
    Ok(removed)
}

/// Removes an output (`on_expiry = "remove"`); one that is already gone is fine.
pub fn remove_output(path: &Path) -> Result<(), WriteError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(WriteError::new("remove", path, error))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    use proptest::prelude::*;

    /// 2026-11-29T03:15:50Z.
    const EXPIRES_AT: u64 = 1_795_922_150;

    fn token(access_token: &str, scope: Option<&str>) -> Token {
        Token {
            access_token: Secret::new(access_token),
            token_type: "Bearer".to_owned(),
            scope: scope.map(str::to_owned),
            issued_at: UNIX_EPOCH + Duration::from_secs(EXPIRES_AT - 300),
            expires_at: UNIX_EPOCH + Duration::from_secs(EXPIRES_AT),
        }
    }

    fn client() -> ClientName {
        ClientName::parse("tasklist").expect("valid name")
    }

    fn rendered(format: &Format, token: &Token) -> String {
        String::from_utf8(render(format, token, &client())).expect("UTF-8")
    }

    fn template(text: &str) -> Format {
        Format::Template(Template::parse(text).expect("valid template"))
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
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
        assert_eq!(
            parsed.placeholders().collect::<Vec<_>>(),
            ["client", "access_token", "client"]
        );
    }

    #[test]
    fn template_errors_name_the_problem_and_what_is_allowed() {
        let cases = [
            (
                "x {{ acces_token }}",
                "unknown placeholder \"acces_token\": expected one of access_token, \
                 token_type, expires_at, expires_at_unix, scope, client, optionally followed \
                 by \"| json\" in \"{{ acces_token }}\" at line 1, column 3 of the template",
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
                 expires_at, expires_at_unix, scope, client, optionally followed by \
                 \"| json\" in \"{{}}\" at line 1, column 1 of the template",
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
            let text = String::from_utf8(render(&format, &issued, &client())).expect("UTF-8");
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
                &render(&format, &token(access_token, None), &client()),
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

    #[test]
    fn write_atomic_creates_parents_0700_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/t.token");
        write_atomic(&path, b"one", 0o640).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"one");
        assert_eq!(mode_of(&path), 0o640);
        // The test process's umask may narrow 0700 but never widen it.
        assert_eq!(mode_of(&dir.path().join("a")) & !0o700, 0);
        assert_eq!(mode_of(&dir.path().join("a/b")) & !0o700, 0);
        write_atomic(&path, b"two", 0o600).expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(names_in(&dir.path().join("a/b")), ["t.token"]);
    }

    #[test]
    fn write_atomic_accepts_a_bare_file_name_and_replaces_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        fs::write(&target, "keep").expect("write target");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        write_atomic(&link, b"new", 0o600).expect("write");
        assert_eq!(fs::read(&target).expect("read"), b"keep");
        assert!(fs::symlink_metadata(&link).expect("metadata").is_file());
        assert!(split_path(Path::new("t.token")).is_ok_and(|(dir, _)| dir == Path::new(".")));
    }

    #[test]
    fn failed_writes_name_the_path_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let occupied = dir.path().join("occupied");
        fs::create_dir(&occupied).expect("mkdir");
        let error = write_atomic(&occupied, b"x", 0o600).expect_err("a directory is in the way");
        assert_eq!(
            error.to_string(),
            format!(
                "cannot replace {}: Is a directory (os error 21)",
                occupied.display()
            )
        );
        assert_eq!(names_in(dir.path()), ["occupied"]);

        let file = dir.path().join("file");
        fs::write(&file, "").expect("write");
        let error = write_atomic(&file.join("t.token"), b"x", 0o600).expect_err("not a dir");
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot create directory {}: ", file.display())),
            "{error}"
        );
        let error = write_atomic(Path::new("/"), b"x", 0o600).expect_err("no file name");
        assert_eq!(error.to_string(), "cannot write /: the path names no file");
    }

    #[test]
    fn write_if_changed_skips_identical_content_and_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.token");
        assert!(write_if_changed(&path, b"abc", 0o600).expect("first write"));
        let before = fs::metadata(&path).expect("metadata");

        assert!(!write_if_changed(&path, b"abc", 0o600).expect("same"));
        let after = fs::metadata(&path).expect("metadata");
        assert_eq!(
            (before.ino(), before.mtime(), before.mtime_nsec()),
            (after.ino(), after.mtime(), after.mtime_nsec())
        );

        assert!(write_if_changed(&path, b"abc", 0o640).expect("mode differs"));
        assert_eq!(mode_of(&path), 0o640);
        assert_ne!(fs::metadata(&path).expect("metadata").ino(), before.ino());

        assert!(write_if_changed(&path, b"abd", 0o640).expect("bytes differ"));
        assert!(write_if_changed(&path, b"abdd", 0o640).expect("length differs"));
        assert_eq!(fs::read(&path).expect("read"), b"abdd");
    }

    #[test]
    fn output_spec_writes_its_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = OutputSpec {
            path: dir.path().join("t.header"),
            format: Format::Header,
            mode: 0o644,
        };
        assert!(spec.write(&token("abc", None), &client()).expect("write"));
        assert!(
            !spec
                .write(&token("abc", None), &client())
                .expect("unchanged")
        );
        assert_eq!(
            fs::read(&spec.path).expect("read"),
            b"Authorization: Bearer abc\n"
        );
        assert_eq!(mode_of(&spec.path), 0o644);
    }

    #[test]
    fn temp_file_names_are_recognised_exactly() {
        let ours = temp_file_name(OsStr::new("t.token"));
        assert!(is_temp_file_name(&ours), "{ours:?}");
        assert!(ours.to_string_lossy().starts_with(".t.token.bearerd-tmp-"));
        for other in [
            "t.token",
            ".t.token.bearerd-tmp-",
            ".t.token.bearerd-tmp-0123456789abcde",
            ".t.token.bearerd-tmp-0123456789abcdef0",
            ".t.token.bearerd-tmp-0123456789ABCDEF",
            "t.token.bearerd-tmp-0123456789abcdef",
            "..bearerd-tmp-0123456789abcdef",
        ] {
            assert!(!is_temp_file_name(OsStr::new(other)), "{other}");
        }
        assert!(is_temp_file_name(OsStr::new(
            ".t.token.bearerd-tmp-0123456789abcdef"
        )));
    }

    #[test]
    fn sweep_removes_only_our_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = [
            ".t.token.bearerd-tmp-0123456789abcdef",
            ".x.env.bearerd-tmp-fedcba9876543210",
        ];
        let theirs = [
            "t.token",
            ".t.token.swp",
            ".t.token.bearerd-tmp-short",
            "t.token.bearerd-tmp-0123456789abcdef",
        ];
        for name in ours.iter().chain(&theirs) {
            fs::write(dir.path().join(name), "x").expect("write");
        }
        fs::create_dir(dir.path().join(".d.bearerd-tmp-0000000000000000")).expect("mkdir");

        let removed = sweep_stale_temps(dir.path()).expect("sweep");
        let expected: Vec<PathBuf> = ours.iter().map(|name| dir.path().join(name)).collect();
        assert_eq!(removed, expected);
        let mut left = theirs.to_vec();
        left.push(".d.bearerd-tmp-0000000000000000");
        left.sort_unstable();
        assert_eq!(names_in(dir.path()), left);

        assert_eq!(
            sweep_stale_temps(&dir.path().join("missing")).expect("missing dir"),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn remove_output_ignores_a_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.token");
        fs::write(&path, "x").expect("write");
        remove_output(&path).expect("remove");
        assert!(!path.exists());
        remove_output(&path).expect("already gone");
        let error = remove_output(dir.path()).expect_err("a directory");
        assert!(error.to_string().starts_with("cannot remove "), "{error}");
    }

    /// Set by [`run_under_umask`] for the child process that runs [`umask_child`].
    const UMASK_CHILD: &str = "BEARERD_TEST_UMASK_CHILD";

    /// The umask is process-wide, so changing it here would race every other test. Instead
    /// this test binary re-runs itself, via `sh -c 'umask …; exec …'`, for one test only.
    fn run_under_umask(umask: &str) {
        let exe = std::env::current_exe().expect("test binary");
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask} && exec \"$0\" --exact output::tests::umask_child \
                 --test-threads=1 --nocapture"
            ))
            .arg(exe)
            .env(UMASK_CHILD, umask)
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "umask {umask}: {output:?}"
        );
    }

    #[test]
    fn modes_are_exact_under_umask_000() {
        run_under_umask("000");
    }

    #[test]
    fn modes_are_exact_under_umask_077() {
        run_under_umask("077");
    }

    /// Does nothing unless run by [`run_under_umask`].
    #[test]
    fn umask_child() {
        let Ok(umask) = std::env::var(UMASK_CHILD) else {
            return;
        };
        let umask = u32::from_str_radix(&umask, 8).expect("octal umask");
        let dir = tempfile::tempdir().expect("tempdir");

        // The umask really is in force here.
        let plain = dir.path().join("plain");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&plain)
            .expect("create");
        assert_eq!(mode_of(&plain), 0o666 & !umask);

        for mode in [0o600, 0o640, 0o644, 0o400] {
            let path = dir.path().join(format!("new/{mode:o}/t.token"));
            write_atomic(&path, b"abc", mode).expect("write");
            assert_eq!(mode_of(&path), mode, "mode {mode:o} under umask {umask:o}");
            assert_eq!(mode_of(path.parent().expect("parent")), 0o700);
            assert!(write_if_changed(&path, b"abcd", mode).expect("rewrite"));
            assert_eq!(mode_of(&path), mode, "mode {mode:o} under umask {umask:o}");
        }
    }
}
