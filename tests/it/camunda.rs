//! Camunda Console's downloaded credentials file drives `examples/camunda-console.toml` after
//! the one step docs/operating.md documents, checked with `bearerd check` (and with kubectl
//! where it is installed). It never talks to Camunda; tests/live/systemd.sh runs the same file
//! through systemd's EnvironmentFile= for real.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

use crate::harness::{Harness, text};

/// The step, exactly as docs/operating.md and the example's header give it.
const STEP: &str = r#"sed -e 's/^export //' -e "s/='\(.*\)'$/=\1/" credentials.txt > camunda.env"#;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// A Console download (fake values, Console's format) as `credentials.txt` in a scratch dir,
/// with `drop` lines left out (to stand for an older download).
fn download(harness: &Harness, drop: &[&str]) {
    let file: String = read("tests/live/camunda-console.txt")
        .lines()
        .filter(|line| {
            !drop
                .iter()
                .any(|name| line.starts_with(&format!("export {name}=")))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    harness.write("credentials.txt", &file);
}

/// Runs the documented step with `sh` in the scratch dir and parses its NAME=value lines.
fn convert(harness: &Harness) -> BTreeMap<String, String> {
    let output = Command::new("sh")
        .args(["-c", STEP])
        .current_dir(harness.dir.path())
        .output()
        .expect("run sh");
    assert!(output.status.success(), "{}", text(&output.stderr));
    harness
        .read("camunda.env")
        .lines()
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not NAME=value: {line:?}"));
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "not a plain variable name: {line:?}"
            );
            assert!(
                !value.contains('\'') && !value.contains('"'),
                "a quote survived: {line:?}"
            );
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// `bearerd check` of `config` with exactly `env` as its environment.
fn check(harness: &Harness, config: &Path, env: &BTreeMap<String, String>) -> Output {
    harness
        .command_with_config(config, &["check"])
        .env_clear()
        .envs(env)
        .output()
        .expect("run bearerd check")
}

#[test]
fn the_documented_step_is_the_one_tested() {
    assert!(
        read("docs/operating.md").contains(STEP),
        "docs/operating.md no longer gives: {STEP}"
    );
    assert!(
        read("examples/camunda-console.toml").contains(STEP),
        "examples/camunda-console.toml no longer gives: {STEP}"
    );
}

#[test]
fn a_console_download_drives_the_example_with_one_client_per_component() {
    let harness = Harness::new();
    download(&harness, &[]);
    let env = convert(&harness);
    assert_eq!(
        env.get("CAMUNDA_OAUTH_URL").map(String::as_str),
        Some("https://login.cloud.camunda.io/oauth/token")
    );
    let output = check(&harness, &repo("examples/camunda-console.toml"), &env);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report = text(&output.stdout);
    assert!(report.contains("valid, 3 client(s)"), "{report}");
    let id = &env["CAMUNDA_CLIENT_ID"];
    for (client, audience) in [
        ("tasklist", "tasklist.camunda.io"),
        ("operate", "operate.camunda.io"),
        ("zeebe", "zeebe.camunda.io"),
    ] {
        let section = report
            .split("\nclient ")
            .find(|section| section.starts_with(&format!("{client}\n")))
            .unwrap_or_else(|| panic!("no client {client} in: {report}"));
        for expected in [
            "token_url https://login.cloud.camunda.io/oauth/token".to_owned(),
            format!("client_id  {id}"),
            format!("audience   {audience}"),
            "client_secret_json".to_owned(),
            format!("/run/bearerd/{client}.token (token, 0640)"),
            format!("/run/bearerd/{client}.header (header, 0640)"),
        ] {
            assert!(
                section.contains(&expected),
                "{expected:?} not in: {section}"
            );
        }
    }
    let secret = &env["CAMUNDA_CLIENT_SECRET"];
    assert!(
        !report.contains(secret.as_str()),
        "the secret is in the report"
    );
    assert!(!text(&output.stderr).contains(secret.as_str()));
}

#[test]
fn an_older_download_without_camunda_client_names_uses_the_zeebe_ones() {
    let harness = Harness::new();
    download(&harness, &["CAMUNDA_CLIENT_ID", "CAMUNDA_CLIENT_SECRET"]);
    let env = convert(&harness);
    let example = repo("examples/camunda-console.toml");

    let output = check(&harness, &example, &env);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let errors = text(&output.stderr);
    assert!(
        errors.contains("environment variable CAMUNDA_CLIENT_ID is not set"),
        "{errors}"
    );

    // What the example's header says to do with such a file.
    let edited = read("examples/camunda-console.toml")
        .replace("${CAMUNDA_CLIENT_ID}", "${ZEEBE_CLIENT_ID}")
        .replace("${CAMUNDA_CLIENT_SECRET}", "${ZEEBE_CLIENT_SECRET}");
    let config = harness.write("bearerd.toml", &edited);
    let output = check(&harness, &config, &env);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains(&format!("client_id  {}", env["ZEEBE_CLIENT_ID"])));
}

#[test]
fn kubectl_takes_the_converted_file_and_refuses_the_download() {
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        eprintln!("skipping: kubectl is not installed");
        return;
    }
    let harness = Harness::new();
    download(&harness, &[]);
    let env = convert(&harness);
    let secret = |file: &str| {
        Command::new("kubectl")
            .args(["create", "secret", "generic", "camunda-credentials"])
            .arg(format!("--from-env-file={file}"))
            .args(["--dry-run=client", "-o", "json"])
            .current_dir(harness.dir.path())
            .output()
            .expect("run kubectl")
    };

    let output = secret("camunda.env");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("kubectl's JSON");
    let data = json["data"].as_object().expect("data");
    let decoded: BTreeMap<String, String> = data
        .iter()
        .map(|(name, value)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().expect("base64 string"))
                .expect("base64");
            (name.clone(), String::from_utf8(bytes).expect("utf-8"))
        })
        .collect();
    assert_eq!(
        decoded, env,
        "envFrom would see other values than bearerd check did"
    );

    let output = secret("credentials.txt");
    assert!(!output.status.success(), "kubectl took `export` lines");
    assert!(
        text(&output.stderr).contains("\"export ZEEBE_ADDRESS\" is not a valid key name"),
        "{}",
        text(&output.stderr)
    );
}
