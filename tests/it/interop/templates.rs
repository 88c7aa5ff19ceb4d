//! The template examples in `examples/templates/` are complete configs that validate, and a real
//! run writes files their consumers can parse, with the token where each consumer looks for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bearerd_idp::IdpSettings;
use serde_json::Value;

use super::{bearerd, succeed};
use crate::harness::{Harness, TestIdp};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/templates")
}

/// Copies `examples/templates/NAME.toml` (and every template file) into a scratch directory,
/// pointed at an in-process token endpoint and with output paths under the scratch directory,
/// plus one plain `token` output (`raw.token`) to compare with. Runs `check` and `run --once`;
/// returns the harness and the token issued.
fn render(name: &str, client: &str, secret_variable: &str) -> (Harness, String) {
    let idp = TestIdp::start(IdpSettings::default());
    let client_id = format!("{client}-bot");
    idp.add_client(&client_id, "template-secret", Duration::from_secs(300));
    let harness = Harness::new();
    for entry in std::fs::read_dir(examples_dir()).expect("examples/templates") {
        let path = entry.expect("entry").path();
        if path
            .extension()
            .is_some_and(|extension| extension == "tmpl")
        {
            let file_name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("template");
            harness.write(&file_name, &text);
        }
    }
    let scratch = format!("{}/", harness.dir.path().display());
    let example = std::fs::read_to_string(examples_dir().join(format!("{name}.toml")))
        .expect("example config");
    assert!(example.contains("https://idp.example.com/oauth/token"));
    let config = example
        .replace("https://idp.example.com/oauth/token", &idp.token_url())
        .replace("/home/app/", &scratch)
        .replace("/run/bearerd/", &scratch)
        .replace("deploy-bot", &client_id)
        + &format!("\n[[clients.{client}.output]]\npath = \"raw.token\"\n");
    let config = harness.write("bearerd.toml", &config);

    let mut check = bearerd(&harness, &config, &["check"]);
    check.env(secret_variable, "template-secret");
    let report = succeed(check, String::new);
    assert!(report.contains("(template, 0600)"), "{report}");

    let mut run = bearerd(&harness, &config, &["run", "--once"]);
    run.env(secret_variable, "template-secret");
    succeed(run, String::new);
    assert_eq!(idp.token_request_count(), 1);
    let token = harness.read("raw.token");
    assert!(!token.is_empty());
    (harness, token)
}

#[test]
fn the_netrc_example_gives_the_token_as_the_password() {
    let (harness, token) = render("netrc", "artifacts", "ARTIFACTS_SECRET");
    let netrc = harness.read(".netrc");
    // .netrc is a sequence of whitespace-separated keyword/value pairs.
    let words: Vec<&str> = netrc.split_whitespace().collect();
    let pairs: Vec<(&str, &str)> = words
        .chunks(2)
        .map(|pair| (pair[0], pair.get(1).copied().unwrap_or("")))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("machine", "artifacts.example.com"),
            ("login", "bearerd"),
            ("password", token.as_str()),
        ],
        "{netrc}"
    );
}

#[test]
fn the_npmrc_example_sets_the_registry_auth_token() {
    let (harness, token) = render("npmrc", "npm", "NPM_SECRET");
    let npmrc = harness.read(".npmrc");
    let settings: Vec<(&str, &str)> = npmrc
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.split_once('=').expect("key=value"))
        .collect();
    assert_eq!(
        settings,
        vec![
            ("registry", "https://npm.example.com/"),
            ("//npm.example.com/:_authToken", token.as_str()),
        ],
        "{npmrc}"
    );
}

#[test]
fn the_docker_example_is_a_config_json_with_a_registry_token() {
    let (harness, token) = render("docker-config", "registry", "REGISTRY_SECRET");
    let config: Value =
        serde_json::from_str(&harness.read("docker/config.json")).expect("valid JSON");
    assert_eq!(
        config["auths"]["registry.example.com"]["registrytoken"],
        token.as_str(),
        "{config}"
    );
}

#[test]
fn the_kubeconfig_example_is_yaml_with_the_token_in_its_user() {
    let (harness, token) = render("kubeconfig", "k8s", "K8S_SECRET");
    let kubeconfig: Value =
        serde_norway::from_str(&harness.read("kubeconfig")).expect("valid YAML");
    assert_eq!(kubeconfig["kind"], "Config");
    assert_eq!(kubeconfig["current-context"], "example");
    let context = &kubeconfig["contexts"][0]["context"];
    assert_eq!(context["user"], "bearerd-k8s");
    let user = &kubeconfig["users"][0];
    assert_eq!(user["name"], "bearerd-k8s");
    assert_eq!(user["user"]["token"], token.as_str(), "{kubeconfig}");
}
