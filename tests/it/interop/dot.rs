//! bearerd against a second real authorization server of another family: Django OAuth Toolkit
//! (Python, oauthlib), run by `tests/interop/dot_server.py` with the client credentials grant and
//! opaque tokens, checked through its RFC 7662 introspection endpoint.
//!
//! Needs the Python environment `.ci/run` builds (`tests/interop/.venv`, from
//! `tests/interop/requirements.txt`), or `$BEARERD_TEST_PYTHON` pointing at a Python that has
//! `django-oauth-toolkit`; a missing one is a test failure, never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ODD_SECRET, bearerd, client, succeed};
use crate::harness::{Config, Harness, Server};
use crate::oidc::basic_auth_header;

/// Migrating a fresh SQLite database takes a few seconds on a busy CI machine.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A running Django OAuth Toolkit on `127.0.0.1:<ephemeral port>`, killed on drop.
struct DjangoOAuthToolkit {
    server: Server,
    token_endpoint: String,
    introspection_endpoint: String,
}

pub(super) fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("BEARERD_TEST_PYTHON") {
        return python.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/.venv/bin/python");
    if !venv.exists() {
        panic!(
            "no Python environment for Django OAuth Toolkit at {}: run `python3 -m venv \
             tests/interop/.venv && tests/interop/.venv/bin/pip install -r \
             tests/interop/requirements.txt` (as .ci/run does), or set BEARERD_TEST_PYTHON",
            venv.display()
        );
    }
    venv
}

impl DjangoOAuthToolkit {
    fn start(config: Value) -> Self {
        let python = python();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/dot_server.py");
        let mut command = Command::new(&python);
        command.arg(&script);
        let (server, ready) = Server::start(
            "Django OAuth Toolkit (tests/interop/dot_server.py)",
            command,
            &config,
            READY_DEADLINE,
            "is `pip install -r tests/interop/requirements.txt` done?",
        );
        let field = |name: &str| {
            ready[name]
                .as_str()
                .unwrap_or_else(|| panic!("ready line lacks {name}: {ready}"))
                .to_owned()
        };
        Self {
            token_endpoint: field("token_endpoint"),
            introspection_endpoint: field("introspection_endpoint"),
            server,
        }
    }

    fn log(&self) -> String {
        self.server.log()
    }

    /// RFC 7662 introspection of `token`, authenticated as the client with `client_secret_basic`.
    async fn introspect(&self, client_id: &str, secret: &str, token: &str) -> Value {
        let response = reqwest::Client::new()
            .post(&self.introspection_endpoint)
            .header("authorization", basic_auth_header(client_id, secret))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection request");
        assert_eq!(response.status(), 200, "{}", self.log());
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON")
    }
}

#[tokio::test]
async fn django_oauth_toolkit_issues_tokens_for_basic_and_post() {
    let server = DjangoOAuthToolkit::start(json!({
        "clients": [
            {"client_id": "basic-bot", "client_secret": "basic-secret"},
            {"client_id": "odd:id", "client_secret": ODD_SECRET},
            {"client_id": "post-bot", "client_secret": ODD_SECRET},
        ],
        "ttl": 120,
        "scopes": ["tasks:read", "tasks:write"],
    }));
    let harness = Harness::new();
    let clients = [
        ("basic", "basic-bot", "basic-secret", "client_secret_basic"),
        ("odd-basic", "odd:id", ODD_SECRET, "client_secret_basic"),
        ("post", "post-bot", ODD_SECRET, "client_secret_post"),
    ];
    let config = harness.write_config(&Config::new().clients(clients.map(
        |(name, client_id, secret, method)| {
            client(name)
                .token_url(&server.token_endpoint)
                .client_id(client_id)
                .secret(secret)
                .auth_method(method)
                .scope("tasks:read")
        },
    )));
    succeed(bearerd(&harness, &config, &["run", "--once"]), || {
        server.log()
    });

    for (name, client_id, secret, _) in clients {
        let written = harness.read(&format!("{name}.token"));
        let printed = succeed(bearerd(&harness, &config, &["token", name]), || {
            server.log()
        });
        assert_ne!(written, printed);
        for token in [written, printed] {
            let info = server.introspect(client_id, secret, &token).await;
            assert_eq!(info["active"], true, "{info}");
            assert_eq!(info["client_id"], client_id, "{info}");
            assert_eq!(info["scope"], "tasks:read", "{info}");
        }
    }
}
