//! The files under `packaging/` are wired together: Kubernetes volumes, mounts, probe ports and
//! arguments agree with each other and with the embedded bearerd config (the secretless example:
//! its credentials are projected service-account tokens, and it holds no Secret), the alert rules
//! name real metrics, and the Debian default config and systemd unit agree. It reads files only;
//! it never talks to a cluster, a Prometheus or systemd.

use std::collections::{BTreeMap, BTreeSet};
use std::env::VarError;
use std::path::{Path, PathBuf};

use bearerd::cli::{Cli, Command};
use bearerd::config::{Auth, Config, SecretSource};
use clap::Parser;
use serde_norway::Value;

/// The metrics `/metrics` serves (see docs/operating.md).
const METRICS: &[&str] = &[
    "bearerd_token_expiry_timestamp_seconds",
    "bearerd_refreshes_total",
    "bearerd_last_error_timestamp_seconds",
    "bearerd_request_duration_seconds",
    "bearerd_request_duration_all_clients_seconds",
    "bearerd_build_info",
    "bearerd_config_last_reload_successful",
    "bearerd_token_file_unusable",
];

fn packaging(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(path)
}

fn read(path: &str) -> String {
    let path = packaging(path);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn yaml(path: &str) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Every document of a multi-document YAML file.
fn yaml_documents(path: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_norway::Deserializer::from_str(&read(path))
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|error| panic!("{path}: {error}"))
        })
        .collect()
}

/// The one document of `kind` in `documents`.
fn of_kind<'a>(documents: &'a [Value], kind: &str, file: &str) -> &'a Value {
    let found: Vec<&Value> = documents
        .iter()
        .filter(|document| document.get("kind").and_then(Value::as_str) == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "{file}: one {kind}");
    found[0]
}

/// `value` at a `.`-separated path of mapping keys.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |value, key| {
        value
            .get(key)
            .unwrap_or_else(|| panic!("no {key:?} (in {path:?}) in {value:?}"))
    })
}

fn string<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

fn list<'a>(value: &'a Value, path: &str) -> &'a [Value] {
    value
        .get(path)
        .map_or(&[][..], |v| v.as_sequence().map_or(&[][..], Vec::as_slice))
}

/// What a ConfigMap and a Secret (none for the secretless example) hold, by key.
struct Sources {
    config_map: String,
    config_data: BTreeMap<String, String>,
    secret: Option<(String, BTreeMap<String, String>)>,
}

fn data(document: &Value, key: &str) -> BTreeMap<String, String> {
    at(document, key)
        .as_mapping()
        .expect("a mapping")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().expect("key").to_owned(),
                v.as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

fn sources() -> Sources {
    let config_map = yaml("kubernetes/configmap.yaml");
    let secret = yaml("kubernetes/secret.yaml");
    assert_eq!(string(&config_map, "kind"), "ConfigMap");
    assert_eq!(string(&secret, "kind"), "Secret");
    Sources {
        config_map: string(&config_map, "metadata.name").to_owned(),
        config_data: data(&config_map, "data"),
        secret: Some((
            string(&secret, "metadata.name").to_owned(),
            data(&secret, "stringData"),
        )),
    }
}

/// The mount path of `volume` in `container`, checking it is a whole-directory mount.
fn mount_path<'a>(container: &'a Value, volume: &str) -> Option<&'a str> {
    list(container, "volumeMounts")
        .iter()
        .find(|mount| string(mount, "name") == volume)
        .map(|mount| {
            assert!(
                mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
                "{volume}: a subPath mount never sees bearerd's renamed files"
            );
            string(mount, "mountPath")
        })
}

fn is_true(value: Option<&Value>) -> bool {
    value.and_then(Value::as_bool) == Some(true)
}

/// Read-only root, no privilege escalation, no capabilities, non-root, small requests.
fn assert_locked_down(pod: &Value, container: &Value) {
    let name = string(container, "name");
    let context = at(container, "securityContext");
    assert!(
        is_true(context.get("readOnlyRootFilesystem")),
        "{name}: readOnlyRootFilesystem"
    );
    assert_eq!(
        context
            .get("allowPrivilegeEscalation")
            .and_then(Value::as_bool),
        Some(false),
        "{name}: allowPrivilegeEscalation"
    );
    assert!(
        is_true(context.get("runAsNonRoot"))
            || is_true(
                pod.get("securityContext")
                    .and_then(|c| c.get("runAsNonRoot"))
            ),
        "{name}: runAsNonRoot"
    );
    let dropped: Vec<&str> = list(at(context, "capabilities"), "drop")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(dropped.contains(&"ALL"), "{name}: capabilities.drop ALL");
    for resource in ["cpu", "memory"] {
        at(container, &format!("resources.requests.{resource}"));
    }
    at(container, "resources.limits.memory");
}

/// What [`check_pod`] found: bearerd's parsed arguments, the config it loads, its container,
/// the config text as loaded (mounted paths moved into `_mirror`), and the projected volumes
/// bearerd mounts, by mount path.
struct Pod {
    cli: Cli,
    config: Config,
    bearerd: Value,
    text: String,
    projected: BTreeMap<String, Value>,
    _mirror: tempfile::TempDir,
}

/// One pod template's wiring (the document of `kind` in `file`).
fn check_pod(file: &str, kind: &str, sources: &Sources) -> Pod {
    let documents = yaml_documents(file);
    let document = of_kind(&documents, kind, file);
    let pod = at(document, "spec.template.spec").clone();
    assert_eq!(
        pod.get("automountServiceAccountToken")
            .and_then(Value::as_bool),
        Some(false),
        "{file}: bearerd needs no Kubernetes API token"
    );

    let volumes: BTreeMap<&str, &Value> = list(&pod, "volumes")
        .iter()
        .map(|volume| (string(volume, "name"), volume))
        .collect();
    let containers: Vec<&Value> = list(&pod, "initContainers")
        .iter()
        .chain(list(&pod, "containers"))
        .collect();
    for container in &containers {
        for mount in list(container, "volumeMounts") {
            let volume = string(mount, "name");
            assert!(
                volumes.contains_key(volume),
                "{file}: {} mounts {volume:?}, which is not a volume",
                string(container, "name")
            );
        }
        assert_locked_down(&pod, container);
    }

    let config_volume = volumes
        .values()
        .find(|volume| volume.get("configMap").is_some())
        .expect("a ConfigMap volume");
    assert_eq!(
        string(config_volume, "configMap.name"),
        sources.config_map,
        "{file}"
    );
    let secret_volume = volumes
        .values()
        .find(|volume| volume.get("secret").is_some());
    match (&sources.secret, secret_volume) {
        (Some((secret, _)), Some(volume)) => {
            assert_eq!(string(volume, "secret.secretName"), secret, "{file}");
        }
        (None, None) => {}
        (Some(_), None) => panic!("{file}: no Secret volume"),
        (None, Some(_)) => panic!("{file}: mounts a Secret"),
    }
    let modes = [
        (Some(config_volume), "configMap"),
        (secret_volume, "secret"),
    ]
    .into_iter()
    .filter_map(|(volume, source)| Some((volume?, source)))
    .chain(
        volumes
            .values()
            .filter(|volume| volume.get("projected").is_some())
            .map(|volume| (volume, "projected")),
    );
    for (volume, source) in modes {
        let mode = at(volume, &format!("{source}.defaultMode"))
            .as_u64()
            .expect("defaultMode is a number");
        assert_eq!(mode & 0o004, 0, "{file}: {source} files readable by others");
    }
    let (tokens, _) = volumes
        .iter()
        .find(|(_, volume)| volume.get("emptyDir").is_some())
        .expect("an emptyDir for the tokens");
    assert_eq!(
        string(volumes[tokens], "emptyDir.medium"),
        "Memory",
        "{file}: tokens stay off disk"
    );

    let bearerd = list(&pod, "initContainers")
        .iter()
        .find(|container| string(container, "name") == "bearerd")
        .expect("bearerd is an init container");
    let mut argv = vec!["bearerd".to_owned()];
    argv.extend(
        list(bearerd, "args")
            .iter()
            .map(|arg| arg.as_str().expect("string argument").to_owned()),
    );
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|error| panic!("{file}: {error}"));

    // The config file is a key of the ConfigMap, mounted as a directory.
    let config_dir = mount_path(bearerd, string(config_volume, "name")).expect("config mounted");
    let key = cli
        .config
        .strip_prefix(config_dir)
        .unwrap_or_else(|_| {
            panic!(
                "{file}: -c {} is outside {config_dir}",
                cli.config.display()
            )
        })
        .to_str()
        .expect("UTF-8")
        .to_owned();
    let text = sources
        .config_data
        .get(&key)
        .unwrap_or_else(|| panic!("{file}: the ConfigMap has no key {key:?}"));

    // Mirror the Secret's and the projected volumes' mounts in a temporary directory, so that
    // `client_secret_file` and the token files resolve.
    let mirror = tempfile::tempdir().expect("tempdir");
    let mut text = text.clone();
    let mut mirrored_dirs = Vec::new();
    let mut mirror_mount = |dir: &str, files: &mut dyn Iterator<Item = (String, String)>| {
        let mirrored = mirror.path().join(dir.trim_start_matches('/'));
        std::fs::create_dir_all(&mirrored).expect("mkdir");
        for (name, value) in files {
            std::fs::write(mirrored.join(name), value).expect("write");
        }
        text = text.replace(dir, &mirrored.to_string_lossy());
        mirrored_dirs.push(mirrored);
    };
    if let (Some((_, secret_data)), Some(volume)) = (&sources.secret, secret_volume) {
        let secret_dir = mount_path(bearerd, string(volume, "name")).expect("secret mounted");
        mirror_mount(secret_dir, &mut secret_data.clone().into_iter());
    }
    let mut projected = BTreeMap::new();
    for volume in volumes.values().filter(|v| v.get("projected").is_some()) {
        let Some(dir) = mount_path(bearerd, string(volume, "name")) else {
            continue;
        };
        let tokens = list(at(volume, "projected"), "sources")
            .iter()
            .filter_map(|source| source.get("serviceAccountToken"))
            .map(|token| {
                (
                    string(token, "path").to_owned(),
                    "eyJhbGciOiJub25lIn0.e30.\n".to_owned(),
                )
            });
        mirror_mount(dir, &mut tokens.collect::<Vec<_>>().into_iter());
        projected.insert(dir.to_owned(), (*volume).clone());
    }
    let config = Config::parse(&cli.config, &text, &|_| Err(VarError::NotPresent))
        .unwrap_or_else(|error| panic!("{file}: the ConfigMap's {key}: {error}"));
    assert!(!config.clients.is_empty(), "{file}: no client");

    // Every output lands in the shared emptyDir, which every other container mounts read-only.
    let token_dir = mount_path(bearerd, tokens).expect("bearerd mounts the tokens");
    for client in &config.clients {
        for output in &client.outputs {
            assert!(
                output.path.starts_with(token_dir),
                "{file}: {} writes {} outside the {tokens} volume ({token_dir})",
                client.name,
                output.path.display()
            );
        }
        if let Auth::Secret {
            secret: SecretSource::File { path, .. },
            ..
        } = &client.request.auth
        {
            assert!(
                mirrored_dirs.iter().any(|dir| path.starts_with(dir)),
                "{file}: {}",
                path.display()
            );
        }
    }
    let readers: Vec<&Value> = list(&pod, "containers").iter().collect();
    assert!(!readers.is_empty());
    for reader in readers {
        let name = string(reader, "name");
        let mount = list(reader, "volumeMounts")
            .iter()
            .find(|mount| string(mount, "name") == *tokens)
            .unwrap_or_else(|| panic!("{file}: {name} does not mount the tokens"));
        assert!(mount_path(reader, tokens).is_some());
        assert!(
            is_true(mount.get("readOnly")),
            "{file}: {name} mounts tokens writable"
        );
    }
    Pod {
        cli,
        config,
        bearerd: bearerd.clone(),
        text,
        projected,
        _mirror: mirror,
    }
}

#[test]
fn the_sidecar_deployment_is_wired_to_its_config() {
    let sources = sources();
    let Pod {
        cli,
        config,
        bearerd,
        ..
    } = check_pod("kubernetes/deployment-sidecar.yaml", "Deployment", &sources);
    assert_sidecar(&cli, &config, &bearerd);
}

/// A native sidecar whose probes reach the `listen` address bearerd serves on.
fn assert_sidecar(cli: &Cli, config: &Config, bearerd: &Value) {
    assert!(matches!(cli.command, Command::Run { once: false, .. }));
    assert_eq!(
        string(bearerd, "restartPolicy"),
        "Always",
        "a native sidecar"
    );

    let listen = config.agent.listen.expect("listen is set for the probes");
    assert!(
        listen.ip().is_unspecified(),
        "the kubelet probes the pod IP, so {listen} must be 0.0.0.0 or ::"
    );
    let ports: BTreeMap<&str, u64> = list(bearerd, "ports")
        .iter()
        .map(|port| {
            (
                port.get("name").and_then(Value::as_str).unwrap_or(""),
                at(port, "containerPort").as_u64().expect("port number"),
            )
        })
        .collect();
    assert_eq!(
        ports.values().copied().collect::<Vec<_>>(),
        [u64::from(listen.port())]
    );
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = at(bearerd, &format!("{probe}.httpGet"));
        assert_eq!(string(get, "path"), path, "{probe}");
        let port = match at(get, "port") {
            Value::Number(number) => number.as_u64().expect("port"),
            Value::String(name) => *ports
                .get(name.as_str())
                .unwrap_or_else(|| panic!("{probe}: no port named {name}")),
            other => panic!("{probe}: port {other:?}"),
        };
        assert_eq!(port, u64::from(listen.port()), "{probe} port vs listen");
    }
}

#[test]
fn the_init_container_job_fetches_once_into_the_shared_volume() {
    let sources = sources();
    let Pod { cli, bearerd, .. } = check_pod("kubernetes/job-init.yaml", "Job", &sources);
    assert!(matches!(cli.command, Command::Run { once: true, .. }));
    assert!(
        bearerd.get("restartPolicy").is_none(),
        "a plain init container, which must exit"
    );
}

/// The keys whose value is a token file bearerd reads at every request.
const TOKEN_FILE_KEYS: &[&str] = &[
    "client_assertion_file",
    "subject_token_file",
    "actor_token_file",
    "assertion_file",
];

#[test]
fn the_secretless_example_has_no_secret_and_reads_projected_tokens() {
    let file = "kubernetes/secretless.yaml";
    let documents = yaml_documents(file);
    for document in &documents {
        assert_ne!(string(document, "kind"), "Secret", "{file}: a Secret");
    }
    let config_map = of_kind(&documents, "ConfigMap", file);
    let sources = Sources {
        config_map: string(config_map, "metadata.name").to_owned(),
        config_data: data(config_map, "data"),
        secret: None,
    };
    let pod = check_pod(file, "Deployment", &sources);
    assert_sidecar(&pod.cli, &pod.config, &pod.bearerd);

    // The pod runs as its own service account, which the file defines.
    let account = string(of_kind(&documents, "ServiceAccount", file), "metadata.name");
    let template = at(
        of_kind(&documents, "Deployment", file),
        "spec.template.spec",
    );
    assert_eq!(string(template, "serviceAccountName"), account, "{file}");
    assert_ne!(account, "default", "{file}: the namespace's shared account");

    // Every projected source is an audience-bound, expiring service-account token.
    let mut projected_files = BTreeSet::new();
    for (dir, volume) in &pod.projected {
        for source in list(at(volume, "projected"), "sources") {
            let token = source
                .get("serviceAccountToken")
                .unwrap_or_else(|| panic!("{file}: {dir}: only serviceAccountToken sources"));
            assert!(!string(token, "audience").is_empty(), "{file}: an audience");
            let lifetime = at(token, "expirationSeconds").as_u64().expect("seconds");
            assert!(
                (600..=86_400).contains(&lifetime),
                "{file}: expirationSeconds {lifetime} (the API server takes 600 s to 24 h)"
            );
            projected_files.insert(format!("{dir}/{}", string(token, "path")));
        }
    }
    assert!(!projected_files.is_empty(), "{file}: no projected token");

    // Every client reads its credential from a projected token, and has no secret of its own.
    let original = &sources.config_data["bearerd.toml"];
    let toml: toml::Table = original.parse().expect("TOML");
    let clients = toml["clients"].as_table().expect("[clients]");
    let mut used = BTreeSet::new();
    for (name, client) in clients {
        let client = client.as_table().expect("a client table");
        for secret in ["client_secret", "client_secret_file", "private_key_file"] {
            assert!(!client.contains_key(secret), "{file}: {name} has {secret}");
        }
        let files: Vec<&str> = TOKEN_FILE_KEYS
            .iter()
            .filter_map(|key| client.get(*key).and_then(toml::Value::as_str))
            .collect();
        assert!(!files.is_empty(), "{file}: {name} reads no token file");
        for path in files {
            assert!(
                projected_files.contains(path),
                "{file}: {name} reads {path}, which is not a projected token ({projected_files:?})"
            );
            used.insert(path.to_owned());
        }
    }
    assert_eq!(
        used, projected_files,
        "{file}: a projected token no client reads"
    );

    // `bearerd check` takes the config as the pod loads it.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bearerd.toml");
    std::fs::write(&config, &pod.text).expect("write the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .expect("run bearerd check");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{file}: bearerd check: {report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in ["client_assertion", "token_exchange"] {
        assert!(report.contains(expected), "{file}: {report}");
    }
}

#[test]
fn the_alert_rules_use_real_metrics() {
    let rules = yaml("prometheus/bearerd-alerts.yaml");
    let mut alerts = BTreeSet::new();
    for group in list(&rules, "groups") {
        for rule in list(group, "rules") {
            let alert = string(rule, "alert");
            let expr = string(rule, "expr");
            assert!(
                METRICS.iter().any(|metric| expr.contains(metric)),
                "{alert}: {expr} names none of {METRICS:?}"
            );
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("bearerd_") {
                    assert!(METRICS.contains(&word), "{alert}: unknown metric {word}");
                }
            }
            assert!(alerts.insert(alert.to_owned()), "{alert} twice");
        }
    }
    let soon = list(&list(&rules, "groups")[0], "rules")
        .iter()
        .find(|rule| string(rule, "alert") == "BearerdTokenExpiresSoon")
        .expect("the 5-minute alert");
    assert_eq!(
        string(soon, "expr"),
        "bearerd_token_expiry_timestamp_seconds - time() < 300"
    );
}

/// The config the Debian package installs is valid as shipped, and so is its commented
/// example once uncommented, with the credential the unit's commented LoadCredential= names.
#[test]
fn the_packaged_config_and_unit_agree() {
    let shipped = read("bearerd.toml");
    let installed = Path::new(bearerd::config::DEFAULT_PATH);
    let config = Config::parse(installed, &shipped, &|_| Err(VarError::NotPresent))
        .expect("valid as shipped");
    assert!(config.clients.is_empty());

    let unit = read("systemd/bearerd.service");
    let exec_start = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let argv: Vec<&str> = exec_start.split_whitespace().collect();
    assert_eq!(argv.first(), Some(&"/usr/bin/bearerd"));
    let cli = Cli::try_parse_from(&argv).expect("ExecStart arguments");
    assert!(matches!(cli.command, Command::Run { once: false, .. }));
    assert_eq!(
        cli.config, installed,
        "the unit uses the default config path"
    );
    let credential = unit
        .lines()
        .find_map(|line| line.strip_prefix("#LoadCredential="))
        .and_then(|value| value.split_once(':'))
        .map(|(name, _)| name)
        .expect("a commented LoadCredential= example");
    let runtime_dir = unit
        .lines()
        .find_map(|line| line.strip_prefix("RuntimeDirectory="))
        .expect("RuntimeDirectory=");

    // Uncomment every line that is TOML (not prose) and load it with a credentials directory.
    let example: String = shipped
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let credentials = tempfile::tempdir().expect("tempdir");
    std::fs::write(credentials.path().join(credential), "s3cret\n").expect("write");
    let directory = credentials.path().to_string_lossy().into_owned();
    let config = Config::parse(installed, &example, &|name| {
        (name == "CREDENTIALS_DIRECTORY")
            .then(|| directory.clone())
            .ok_or(VarError::NotPresent)
    })
    .unwrap_or_else(|error| panic!("the uncommented example: {error}\n{example}"));
    assert_eq!(config.clients.len(), 1);
    for output in &config.clients[0].outputs {
        assert!(
            output.path.starts_with(Path::new("/run").join(runtime_dir)),
            "{} is outside the unit's RuntimeDirectory",
            output.path.display()
        );
    }
}
