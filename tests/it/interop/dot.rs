//! bearerd against a second real authorization server of another family: Django OAuth Toolkit
//! (Python, oauthlib), run by `tests/interop/dot_server.py` with the client credentials grant and
//! opaque tokens, checked through its RFC 7662 introspection endpoint.
//!
//! Needs the Python environment `.ci/run` builds (`tests/interop/.venv`, from
//! `tests/interop/requirements.txt`), or `$BEARERD_TEST_PYTHON` pointing at a Python that has
//! `django-oauth-toolkit`; a missing one is a test failure, never a silent skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::{Value, json};

use super::{ODD_SECRET, bearerd, client_toml, quoted, succeed};
use crate::harness::Harness;
use crate::oidc::basic_auth_header;

/// Migrating a fresh SQLite database takes a few seconds on a busy CI machine.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A running Django OAuth Toolkit on `127.0.0.1:<ephemeral port>`, killed on drop.
struct DjangoOAuthToolkit {
    child: Child,
    /// Held open: the server exits when its stdin reaches EOF.
    _stdin: ChildStdin,
    _config: tempfile::NamedTempFile,
    log: Arc<Mutex<String>>,
    token_endpoint: String,
    introspection_endpoint: String,
}

fn python() -> PathBuf {
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
        let mut config_file = tempfile::Builder::new()
            .prefix("bearerd-dot-")
            .suffix(".json")
            .tempfile()
            .expect("create the server config");
        serde_json::to_writer(&mut config_file, &config).expect("write the config");
        config_file.flush().expect("flush the config");

        let python = python();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/dot_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(config_file.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {} ({error})", python.display()));
        let stdin = child.stdin.take().expect("stdin");
        let log = Arc::new(Mutex::new(String::new()));
        drain(child.stderr.take().expect("stderr"), Arc::clone(&log), None);
        let (ready_tx, ready_rx) = mpsc::channel();
        drain(
            child.stdout.take().expect("stdout"),
            Arc::clone(&log),
            Some(ready_tx),
        );
        let ready = match ready_rx.recv_timeout(READY_DEADLINE) {
            Ok(ready) => ready,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "Django OAuth Toolkit (tests/interop/dot_server.py) did not start ({error:?}); \
                     is `pip install -r tests/interop/requirements.txt` done?\n--- its output ---\n{}",
                    log.lock().map(|log| log.clone()).unwrap_or_default()
                );
            }
        };
        let field = |name: &str| {
            ready[name]
                .as_str()
                .unwrap_or_else(|| panic!("ready line lacks {name}: {ready}"))
                .to_owned()
        };
        Self {
            token_endpoint: field("token_endpoint"),
            introspection_endpoint: field("introspection_endpoint"),
            child,
            _stdin: stdin,
            _config: config_file,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
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

impl Drop for DjangoOAuthToolkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- Django OAuth Toolkit output ---\n{}", self.log());
        }
    }
}

/// Copies the pipe's lines into `log`; with `ready`, the first JSON line with an `issuer` goes
/// there instead.
fn drain<R: Read + Send + 'static>(
    pipe: R,
    log: Arc<Mutex<String>>,
    mut ready: Option<mpsc::Sender<Value>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(sender) = ready.take() {
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) if value.get("issuer").is_some() => {
                        let _ = sender.send(value);
                        continue;
                    }
                    _ => ready = Some(sender),
                }
            }
            if let Ok(mut log) = log.lock() {
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
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
    let mut config = String::new();
    for (name, client_id, secret, method) in clients {
        config.push_str(&client_toml(
            name,
            &format!(
                "token_url = {}\nclient_id = {}\nclient_secret = {}\nauth_method = \"{method}\"\n\
                 scope = \"tasks:read\"",
                quoted(&server.token_endpoint),
                quoted(client_id),
                quoted(secret)
            ),
        ));
    }
    let config = harness.write("bearerd.toml", &config);
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
