//! What a restart needs to reuse a still-valid token: one small JSON file per client, trusted
//! only if bearerd wrote it, and the lock beside it that `token --cached` callers share. It
//! never decides whether to reuse a token (the worker and `token` do); it only reads, writes
//! and locks.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::{Agent, ClientSpec};
use crate::files::{self, Own, OwnFileError};
use crate::oauth;
use crate::output;
use crate::secret::{self, Secret};
use crate::token::{Token, is_b64token, is_token_type_uri};

/// Unchanged when the fingerprint became keyed: a file with an unkeyed digest simply does not
/// match, which costs one fetch after the upgrade.
const VERSION: u32 = 1;

/// A state file is about 300 bytes; anything much larger is not one of ours.
const MAX_STATE_BYTES: u64 = 64 * 1024;

#[derive(Serialize, Deserialize)]
struct Persisted {
    version: u32,
    /// [`settings_fingerprint`] of the client that fetched the token.
    settings: String,
    access_token: String,
    token_type: String,
    scope: Option<String>,
    issued_at: u64,
    expires_at: u64,
    /// Absent in files written before token exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<String>,
}

/// Where a client's state lives: `state_dir/NAME.json`, else a hidden file beside its first
/// output (so it shares that directory's lifetime and permissions).
pub(crate) fn path(agent: &Agent, client: &ClientSpec) -> PathBuf {
    match &agent.state_dir {
        Some(dir) => dir.join(format!("{}.json", client.name)),
        None => {
            let dir = client
                .outputs
                .first()
                .and_then(|output| output.path.parent())
                .unwrap_or(Path::new("."));
            dir.join(format!(".{}.bearerd-state.json", client.name))
        }
    }
}

/// HMAC-SHA256, keyed by the client's credential (`oauth::fingerprint_key`), of everything
/// that decides which token the server issues (`RequestSpec::canonical_settings`). Keyed, so
/// that someone who can write the state directory and knows the config still cannot make a
/// planted file match; a rotated credential therefore refetches once. The value reveals
/// nothing about the credential to anyone who cannot already read it: the state file is mode
/// 0600, owned by bearerd, which reads the credential anyway.
fn settings_fingerprint(client: &ClientSpec) -> Result<String, String> {
    let tag = ring::hmac::sign(
        &settings_key(client)?,
        client.request.canonical_settings().as_bytes(),
    );
    Ok(secret::hex(tag.as_ref()))
}

/// Whether `fingerprint` is [`settings_fingerprint`] of `client`, compared in constant time.
fn fingerprint_matches(fingerprint: &str, client: &ClientSpec) -> bool {
    let Some(tag) = unhex(fingerprint) else {
        return false;
    };
    settings_key(client).is_ok_and(|key| {
        ring::hmac::verify(&key, client.request.canonical_settings().as_bytes(), &tag).is_ok()
    })
}

fn settings_key(client: &ClientSpec) -> Result<ring::hmac::Key, String> {
    let credential = oauth::fingerprint_key(&client.request)?.ok_or_else(|| {
        format!(
            "client {} has no credential to key its state file with",
            client.name
        )
    })?;
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &credential))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// The state file's bytes, if bearerd can trust that it wrote them: a regular file (a symlink
/// is not followed), no larger than [`MAX_STATE_BYTES`], owned by bearerd's own user, and
/// writable by no one else. Anything else is warned about and ignored.
fn read_trusted(path: &Path) -> Option<Vec<u8>> {
    match files::read_own(path, MAX_STATE_BYTES) {
        Ok(bytes) => Some(bytes),
        Err(OwnFileError::Missing) => None,
        Err(OwnFileError::Refused(reason)) => {
            warn!(
                path = %path.display(),
                "ignoring the state file ({reason}); fetching a new token instead"
            );
            None
        }
    }
}

/// The token saved for `client`, if there is one that bearerd wrote (see `read_trusted`) and
/// it was fetched with the same settings and credential.
pub fn load(path: &Path, client: &ClientSpec) -> Option<Token> {
    let bytes = read_trusted(path)?;
    let persisted: Persisted = serde_json::from_slice(&bytes).ok()?;
    if persisted.version != VERSION || !fingerprint_matches(&persisted.settings, client) {
        return None;
    }
    if !is_b64token(&persisted.access_token)
        || persisted
            .issued_token_type
            .as_deref()
            .is_some_and(|kind| !is_token_type_uri(kind))
    {
        return None;
    }
    // A time past the year 9999 cannot be formatted for a log line: such a file is not ours.
    const LATEST: u64 = 253_402_300_799;
    let at =
        |secs: u64| (secs <= LATEST).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
    Some(Token {
        access_token: Secret::new(persisted.access_token),
        token_type: persisted.token_type,
        scope: persisted.scope,
        issued_at: at(persisted.issued_at)?,
        expires_at: at(persisted.expires_at)?,
        issued_token_type: persisted.issued_token_type,
    })
}

/// Saves `token` for `client` atomically with mode 0600, without fsync (see
/// `output::Durability::Cache`).
pub fn save(path: &Path, client: &ClientSpec, token: &Token) -> Result<(), String> {
    let persisted = Persisted {
        version: VERSION,
        settings: settings_fingerprint(client)
            .map_err(|error| format!("cannot save state to {}: {error}", path.display()))?,
        access_token: token.access_token.expose().to_owned(),
        token_type: token.token_type.clone(),
        scope: token.scope.clone(),
        issued_at: crate::clock::Clock::unix_seconds(token.issued_at),
        expires_at: crate::clock::Clock::unix_seconds(token.expires_at),
        issued_token_type: token.issued_token_type.clone(),
    };
    let bytes = serde_json::to_vec(&persisted)
        .map_err(|error| format!("cannot encode state for {}: {error}", path.display()))?;
    // A cache: atomic, but not fsynced (a power loss costs one refetch, not a bad token).
    output::write_atomic_as(path, &bytes, 0o600, output::Durability::Cache)
        .map_err(|error| error.to_string())
}

/// Removes a client's state (its token expired and its files were removed).
pub(crate) fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// The lock file beside the state file at `state_path` (`NAME.lock` in `state_dir`, else
/// `.NAME.bearerd-state.lock`): `bearerd token --cached` callers of one client take turns on
/// it, so that they send one request. It stays when released: unlinking a lock file races
/// whoever has just opened it.
pub(crate) fn lock_path(state_path: &Path) -> PathBuf {
    state_path.with_extension("lock")
}

/// An open lock file, trusted as a state file is: a regular file of bearerd's user that no one
/// else can write (one owned by someone else could be held by them forever). The lock is an
/// exclusive `flock`, released when this is dropped, or by the kernel when the process dies:
/// a killed holder never wedges the others.
pub(crate) struct LockFile {
    file: File,
    path: PathBuf,
}

impl LockFile {
    /// Opens the lock file at `path`, creating it with mode 0600 (and its directory with mode
    /// 0700, as the state writer would) without following a symlink or blocking on a FIFO.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::DirBuilderExt;
        let refuse =
            |reason: String| format!("cannot use the lock file {}: {reason}", path.display());
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|error| refuse(format!("cannot create its directory: {error}")))?;
        }
        let file = files::open_own(path, Own::Create).map_err(|error| refuse(error.to_string()))?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Takes the lock unless another process holds it (then `false`, at once).
    pub(crate) fn try_lock(&self) -> Result<bool, String> {
        use rustix::fs::{FlockOperation, flock};
        match flock(&self.file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => Ok(false),
            Err(error) => Err(format!(
                "cannot lock {}: {}",
                self.path.display(),
                io::Error::from(error)
            )),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn client(secret: &str) -> ClientSpec {
        let text = format!(
            "[clients.api]\ntoken_url = \"https://idp.example/token\"\nclient_id = \"api\"\n\
             client_secret = \"{secret}\"\n[[clients.api.output]]\npath = \"/run/x/api.token\"\n"
        );
        let config =
            crate::config::Config::parse(Path::new("/etc/bearerd/bearerd.toml"), &text, &|_| {
                Err(std::env::VarError::NotPresent)
            })
            .expect("valid config");
        ClientSpec::clone(&config.clients[0])
    }

    #[test]
    fn the_fingerprint_is_keyed_by_the_credential() {
        let one = settings_fingerprint(&client("secret-one")).expect("fingerprint");
        assert_eq!(one.len(), 64);
        assert_eq!(
            one,
            settings_fingerprint(&client("secret-one")).expect("again")
        );
        assert!(fingerprint_matches(&one, &client("secret-one")));
        assert!(!fingerprint_matches(&one, &client("secret-two")));
        // What anyone who has read the config but not the secret can compute.
        let unkeyed = ring::digest::digest(
            &ring::digest::SHA256,
            client("secret-one").request.canonical_settings().as_bytes(),
        );
        assert!(!fingerprint_matches(
            &secret::hex(unkeyed.as_ref()),
            &client("secret-one")
        ));
        assert!(!fingerprint_matches("not hex", &client("secret-one")));
        assert!(
            !client("secret-one")
                .request
                .canonical_settings()
                .contains("secret-one")
        );
    }

    /// A client assertion the kubelet rotates keeps the saved token (the file's path is in
    /// the fingerprint, its content is not), and the issued token type survives a restart.
    #[test]
    #[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
    fn a_rotated_token_file_keeps_the_saved_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let assertion = dir.path().join("token");
        std::fs::write(&assertion, "first.assertion.x").expect("write");
        let text = format!(
            "[clients.api]\ntoken_url = \"https://idp.example/token\"\nclient_id = \"api\"\n\
             auth_method = \"client_assertion\"\nclient_assertion_file = {:?}\n\
             [[clients.api.output]]\npath = {:?}\n",
            assertion.display().to_string(),
            dir.path().join("api.token").display().to_string()
        );
        let parse = |text: &str| {
            crate::config::Config::parse(&dir.path().join("bearerd.toml"), text, &|_| {
                Err(std::env::VarError::NotPresent)
            })
            .expect("valid config")
            .clients
            .remove(0)
        };
        let spec = parse(&text);
        let path = dir.path().join("state.json");
        let mut token = crate::token::sample("abc.def", None, 4_000_000_000);
        token.issued_token_type = Some("urn:ietf:params:oauth:token-type:access_token".into());
        save(&path, &spec, &token).expect("save");
        std::fs::write(&assertion, "second.assertion.y").expect("rotate");
        assert_eq!(load(&path, &spec), Some(token));
        let elsewhere = parse(&text.replace("/token\"\n[[", "/other\"\n[["));
        assert_ne!(elsewhere.request, spec.request);
        assert_eq!(
            load(&path, &elsewhere),
            None,
            "another file is another identity"
        );
    }

    /// A time no log line can show (past the year 9999) makes the file untrusted, not a panic.
    #[test]
    #[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
    fn a_saved_time_past_the_year_9999_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let spec = client("secret-one");
        let token = crate::token::sample("abc.def", None, 4_000_000_000);
        save(&path, &spec, &token).expect("save");
        assert_eq!(load(&path, &spec), Some(token));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("4000000000"), "{text}");
        std::fs::write(&path, text.replace("4000000000", "1000000000000000")).expect("edit");
        assert_eq!(load(&path, &spec), None);
    }

    #[test]
    fn one_holder_at_a_time_and_a_dropped_lock_is_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("new/.api.bearerd-state.json");
        let path = lock_path(&state);
        assert_eq!(path, dir.path().join("new/.api.bearerd-state.lock"));
        assert_eq!(
            lock_path(Path::new("/var/lib/bearerd/api.json")),
            Path::new("/var/lib/bearerd/api.lock")
        );
        // Each open is its own open file description, so two in one process contend as two
        // processes would.
        let first = LockFile::open(&path).expect("open, creating the directory");
        let second = LockFile::open(&path).expect("open again");
        assert!(first.try_lock().expect("lock"));
        assert!(!second.try_lock().expect("try"), "held by the first");
        drop(first);
        assert!(second.try_lock().expect("lock"), "free once dropped");
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
    }

    #[test]
    fn unhex_reads_what_hex_writes_and_nothing_else() {
        assert_eq!(
            unhex(&secret::hex(&[0, 1, 254, 255])),
            Some(vec![0, 1, 254, 255])
        );
        assert_eq!(unhex(""), Some(Vec::new()));
        for junk in ["0", "zz", "0g", "é0", "+1"] {
            assert_eq!(unhex(junk), None, "{junk}");
        }
    }
}
