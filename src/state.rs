//! What a restart needs to reuse a still-valid token: one small JSON file per client.
//! It never decides whether to reuse a token (the worker does); it only reads and writes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{Agent, Auth, ClientSpec, Endpoint};
use crate::output;
use crate::secret::{self, Secret};
use crate::token::{Token, is_b64token};

const VERSION: u32 = 1;

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
}

/// Where a client's state lives: `state_dir/NAME.json`, else a hidden file beside its first
/// output (so it shares that directory's lifetime and permissions).
pub fn path(agent: &Agent, client: &ClientSpec) -> PathBuf {
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

/// A digest of everything that decides which token the server issues. Secrets are left out on
/// purpose: a rotated secret does not make a valid token invalid, and the state file must
/// not carry anything that helps guess a secret.
pub fn settings_fingerprint(client: &ClientSpec) -> String {
    let endpoint = match &client.endpoint {
        Endpoint::TokenUrl(url) => format!("token_url={url}"),
        Endpoint::Issuer(url) => format!("issuer={url}"),
    };
    let auth = match &client.auth {
        Auth::Secret { method, .. } => {
            format!("secret:{}", method.map_or("discovered", |m| m.as_str()))
        }
        Auth::PrivateKeyJwt {
            key_file, key_id, ..
        } => {
            format!("private_key_jwt:{}:{key_id:?}", key_file.display())
        }
        Auth::TlsClientAuth => "tls_client_auth".to_owned(),
    };
    let canonical = serde_json::json!({
        "endpoint": endpoint,
        "client_id": client.client_id,
        "auth": auth,
        "audience": client.audience,
        "scope": client.scope,
        "extra_params": client.extra_params,
    });
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.to_string().as_bytes());
    secret::hex(digest.as_ref())
}

/// The token saved for `client`, if there is one and it was fetched with the same settings.
pub fn load(path: &Path, client: &ClientSpec) -> Option<Token> {
    let bytes = std::fs::read(path).ok()?;
    let persisted: Persisted = serde_json::from_slice(&bytes).ok()?;
    if persisted.version != VERSION || persisted.settings != settings_fingerprint(client) {
        return None;
    }
    if !is_b64token(&persisted.access_token) {
        return None;
    }
    let at = |secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs));
    Some(Token {
        access_token: Secret::new(persisted.access_token),
        token_type: persisted.token_type,
        scope: persisted.scope,
        issued_at: at(persisted.issued_at)?,
        expires_at: at(persisted.expires_at)?,
    })
}

/// Saves `token` for `client` atomically with mode 0600, without fsync (see
/// [`output::Durability::Cache`]).
pub fn save(path: &Path, client: &ClientSpec, token: &Token) -> Result<(), String> {
    let persisted = Persisted {
        version: VERSION,
        settings: settings_fingerprint(client),
        access_token: token.access_token.expose().to_owned(),
        token_type: token.token_type.clone(),
        scope: token.scope.clone(),
        issued_at: crate::clock::Clock::unix_seconds(token.issued_at),
        expires_at: crate::clock::Clock::unix_seconds(token.expires_at),
    };
    let bytes = serde_json::to_vec(&persisted)
        .map_err(|error| format!("cannot encode state for {}: {error}", path.display()))?;
    // A cache: atomic, but not fsynced (a power loss costs one refetch, not a bad token).
    output::write_atomic_as(path, &bytes, 0o600, output::Durability::Cache)
        .map_err(|error| error.to_string())
}

/// Removes a client's state (its token expired and its files were removed).
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}
