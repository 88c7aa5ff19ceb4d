//! The files in `examples/` work as the README says: the Camunda config validates, and the
//! shell script sends the token bearerd wrote to an HTTP API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use bearerd_idp::IdpSettings;

use crate::harness::{BEARERD, Harness, TestIdp, text};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn the_camunda_example_config_is_valid() {
    let output = std::process::Command::new(BEARERD)
        .args(["check", "-c"])
        .arg(example("camunda-tasklist.toml"))
        .env("TASKLIST_CLIENT_ID", "tasklist-bot")
        .env("TASKLIST_SECRET", "not-a-real-secret")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report = text(&output.stdout);
    assert!(report.contains("client_secret_json"), "{report}");
    assert!(
        report.contains("/run/bearerd/tasklist.header (header, 0600)"),
        "{report}"
    );
}

/// A stand-in for Tasklist: answers every request with `[]` and reports its
/// `Authorization` headers.
fn fake_tasklist(requests: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..requests {
            let (stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("read");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("authorization") {
                        seen.push(value.trim().to_owned());
                    }
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let mut stream = reader.into_inner();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]")
                .expect("answer");
        }
        seen
    });
    (url, handle)
}

#[test]
fn the_shell_example_sends_the_token_from_the_env_and_header_files() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("tasklist-bot", "tasklist-secret", Duration::from_secs(300));
    let harness = Harness::new();
    let config = std::fs::read_to_string(example("camunda-tasklist.toml"))
        .expect("example")
        .replace(
            "https://login.cloud.camunda.io/oauth/token",
            &idp.token_url(),
        )
        .replace(
            "/run/bearerd/",
            &format!("{}/", harness.dir.path().display()),
        );
    harness.write("bearerd.toml", &config);
    let output = harness
        .command(&["run", "--once"])
        .env("TASKLIST_CLIENT_ID", "tasklist-bot")
        .env("TASKLIST_SECRET", "tasklist-secret")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = harness.read("tasklist.token");

    let (url, server) = fake_tasklist(2);
    let script = std::process::Command::new("sh")
        .arg(example("use-tokens.sh"))
        .arg(harness.dir.path())
        .arg(&url)
        .output()
        .expect("run the script");
    assert!(script.status.success(), "{}", text(&script.stderr));
    assert_eq!(text(&script.stdout), "[][]");
    let seen = server.join().expect("server");
    assert_eq!(
        seen,
        vec![format!("Bearer {token}"), format!("Bearer {token}")]
    );
}
