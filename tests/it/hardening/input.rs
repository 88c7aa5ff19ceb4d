//! Hardening: input. Files that are not regular or too large (the config and every file it
//! names, at load and at use), configs with a flood of errors and the reload that validates
//! one, and environment variables that are set but not UTF-8. No test here may hang the suite:
//! every child is killed at a deadline, and every in-process read of a FIFO is rescued.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bearerd::config::{TlsIdentity, TlsSettings};
use bearerd::oauth::Roots;
use bearerd_idp::IdpSettings;

use crate::harness::{Client, Config, Daemon, Harness, TestIdp, text};
use crate::harness::{try_http_get, wait_until};

const SECRET_CAP: u64 = 64 * 1024;
const CONFIG_CAP: u64 = 16 * 1024 * 1024;
const CERT_CAP: u64 = 4 * 1024 * 1024;

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
}

/// A sparse file of `len` bytes of zeros: big without costing the disk.
fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path)
        .and_then(|file| file.set_len(len))
        .expect("sparse file");
}

/// A file of `len` bytes of `x`: valid as a secret or a template, only too large.
fn filled(path: &Path, len: u64) {
    let mut file = std::fs::File::create(path).expect("create");
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        file.write_all(&chunk[..n as usize]).expect("write");
        left -= n;
    }
}

/// `bearerd ARGS -c CONFIG` under a 1 GiB address-space limit (so that a read of /dev/zero
/// cannot take the machine's memory), run to its end, or killed after a deadline and failed.
fn finishes(args: &[&str], config: &Path) -> Output {
    let mut prlimit = Command::new("prlimit");
    prlimit.arg(format!("--as={}", 1u64 << 30)).arg("--");
    let mut child = Harness::command_under(prlimit, config, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run prlimit bearerd (util-linux)");
    // Drained meanwhile, so that a long report cannot block the child on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let mut status = None;
    wait_until(Duration::from_secs(20), || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "bearerd {args:?} -c {} did not finish within 20 s; stderr:\n{}",
            config.display(),
            text(&stderr.join().expect("stderr"))
        );
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

/// Both `check` and `run` refuse `config` at once, exit 2, and say exactly `expected`.
fn refused(config: &Path, expected: &str) {
    for args in [&["check"][..], &["run"][..]] {
        let output = finishes(args, config);
        assert_eq!(
            (output.status.code(), text(&output.stderr)),
            (Some(2), format!("{expected}\n")),
            "bearerd {args:?} -c {}",
            config.display()
        );
    }
}

#[test]
fn a_config_that_is_a_device_a_fifo_or_too_large_is_refused_at_once() {
    let harness = Harness::new();
    let fifo = harness.path("fifo.toml");
    mkfifo(&fifo);
    let large = harness.path("large.toml");
    sparse(&large, CONFIG_CAP + 1);
    let directory = harness.path("directory.toml");
    std::fs::create_dir(&directory).expect("mkdir");
    for (config, problem) in [
        (
            Path::new("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (fifo.as_path(), "is a FIFO, not a regular file"),
        (large.as_path(), "is larger than 16 MiB"),
        (directory.as_path(), "is a directory, not a regular file"),
    ] {
        refused(
            config,
            &format!("{}: config file {problem}", config.display()),
        );
    }
}

/// Client `api` at an endpoint nothing is sent to, without a secret or outputs.
fn api() -> Client {
    Client::new("api")
        .token_url("https://idp.example.com/token")
        .client_id("api")
}

/// A valid config whose client reads one more file, `key = "PATH"` in `[clients.api]` (or in
/// its output, for `template_file`).
fn config_naming(key: &str, path: &Path) -> String {
    let client = match key {
        "template_file" => api().secret("s").output_template_file("api.token", path),
        "client_secret_file" => api().secret_file(path).output("api.token"),
        "private_key_file" => api()
            .auth_method("private_key_jwt")
            .private_key_file(path)
            .output("api.token"),
        "ca_file" => api().secret("s").ca_file(path).output("api.token"),
        _ => panic!("no config naming {key}"),
    };
    Config::new().client(client).to_string()
}

/// Where `key = "…"` is in `text`: line and column (1-based) of its value.
fn value_location(text: &str, key: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(index, line)| {
            line.strip_prefix(&format!("{key} = "))
                .map(|_| (index + 1, key.len() + 4))
        })
        .expect("the key is in the config")
}

#[test]
fn secret_template_key_and_certificate_files_that_are_not_regular_or_too_large_are_refused() {
    let harness = Harness::new();
    let fifo = harness.path("fifo");
    mkfifo(&fifo);
    // (key, what messages call it, its cap in bytes and in words)
    let keys = [
        ("client_secret_file", "secret file", SECRET_CAP, "64 KiB"),
        ("template_file", "template file", SECRET_CAP, "64 KiB"),
        ("private_key_file", "private_key_file", SECRET_CAP, "64 KiB"),
        ("ca_file", "ca_file", CERT_CAP, "4 MiB"),
    ];
    for (key, name, cap, cap_words) in keys {
        let large = harness.path(&format!("{key}.large"));
        filled(&large, cap + 1);
        for (file, problem) in [
            (
                PathBuf::from("/dev/zero"),
                "is a character device, not a regular file".to_owned(),
            ),
            (fifo.clone(), "is a FIFO, not a regular file".to_owned()),
            (large.clone(), format!("is larger than {cap_words}")),
        ] {
            let config_text = config_naming(key, &file);
            let config = harness.write("bearerd.toml", &config_text);
            let (line, column) = value_location(&config_text, key);
            let prefix = if key == "template_file" {
                "clients.api.output[0]"
            } else {
                "clients.api"
            };
            refused(
                &config,
                &format!(
                    "{}:{line}:{column}: {prefix}.{key}: {name} {} {problem}",
                    config.display(),
                    file.display()
                ),
            );
        }
    }
    // The client certificate and its key: each read when the config is loaded.
    let cert = harness.write("client.pem", "read, not parsed\n");
    for key in ["tls_cert_file", "tls_key_file"] {
        let (cert_file, key_file) = if key == "tls_cert_file" {
            (&fifo, &cert)
        } else {
            (&cert, &fifo)
        };
        let client = api()
            .secret("s")
            .tls_identity(cert_file, key_file)
            .output("api.token");
        let config_text = Config::new().client(client).to_string();
        let config = harness.write("bearerd.toml", &config_text);
        let (line, column) = value_location(&config_text, key);
        refused(
            &config,
            &format!(
                "{}:{line}:{column}: clients.api.{key}: {key} {} is a FIFO, not a regular file",
                config.display(),
                fifo.display()
            ),
        );
    }
}

#[test]
fn symlinks_to_regular_files_keep_working() {
    // kubelet's layout: NAME → ..data/NAME, ..data → ..TIMESTAMP/.
    let harness = Harness::new();
    harness.write("..2026_01_01/secret", "s3cret\n");
    harness.write("..2026_01_01/template", "{{ access_token }}\n");
    std::os::unix::fs::symlink("..2026_01_01", harness.path("..data")).expect("link");
    for name in ["secret", "template"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), harness.path(name)).expect("link");
    }
    let client = api()
        .secret_file("secret")
        .output_template_file("api.token", "template");
    harness.write(
        "..2026_01_01/bearerd.toml",
        &Config::new().client(client).to_string(),
    );
    std::os::unix::fs::symlink("..data/bearerd.toml", harness.path("bearerd.toml")).expect("link");
    let output = finishes(&["check"], &harness.path("bearerd.toml"));
    assert_eq!(output.status.code(), Some(0), "{}", text_of(&output));
}

fn text_of(output: &Output) -> String {
    format!("{}{}", text(&output.stdout), text(&output.stderr))
}

/// Runs `work` on its own thread. If it is still running after a deadline, it is blocked on
/// `fifo`: a writer opens and closes the FIFO so that the reader sees its end, and the test
/// fails, rather than hanging the suite.
fn rescued<T: Send + 'static>(fifo: &Path, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(work());
    });
    match receiver.recv_timeout(Duration::from_secs(10)) {
        Ok(value) => value,
        Err(_) => {
            let flags = rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK;
            let _ = rustix::fs::open(fifo, flags, rustix::fs::Mode::empty());
            panic!("blocked for 10 s reading the FIFO {}", fifo.display());
        }
    }
}

#[test]
fn tls_files_are_read_bounded_when_the_http_client_is_built() {
    let harness = Harness::new();
    let fifo = harness.path("fifo");
    mkfifo(&fifo);
    let large = harness.path("large.pem");
    sparse(&large, CERT_CAP + 1);
    // PEM-shaped, so that the key is read after it (the certificate is checked only by rustls).
    let cert = harness.write(
        "client.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let cases = [
        (
            TlsSettings {
                ca_file: Some(fifo.clone()),
                ..TlsSettings::default()
            },
            format!("ca_file {} is a FIFO, not a regular file", fifo.display()),
        ),
        (
            TlsSettings {
                ca_file: Some(large.clone()),
                ..TlsSettings::default()
            },
            format!("ca_file {} is larger than 4 MiB", large.display()),
        ),
        (
            TlsSettings {
                identity: Some(TlsIdentity {
                    cert_file: large.clone(),
                    key_file: cert.clone(),
                }),
                ..TlsSettings::default()
            },
            format!("tls_cert_file {} is larger than 4 MiB", large.display()),
        ),
        (
            TlsSettings {
                identity: Some(TlsIdentity {
                    cert_file: cert.clone(),
                    key_file: fifo.clone(),
                }),
                ..TlsSettings::default()
            },
            format!(
                "tls_key_file {} is a FIFO, not a regular file",
                fifo.display()
            ),
        ),
    ];
    for (tls, expected) in cases {
        let built = rescued(&fifo, move || {
            bearerd::oauth::http_client(Duration::from_secs(5), &tls, Roots::CaFileOnly).map(|_| ())
        });
        assert_eq!(built, Err(expected));
    }
}

#[test]
fn the_private_key_is_read_bounded_at_each_request() {
    let idp = TestIdp::start(IdpSettings::default());
    let harness = Harness::new();
    let key = harness.write("client.key", "replaced below\n");
    let client = Client::new("api")
        .token_url(&idp.token_url())
        .client_id("api")
        .auth_method("private_key_jwt")
        .private_key_file("client.key")
        .output("api.token");
    let config_path = harness.write_config(&Config::new().client(client));
    let config = bearerd::config::Config::load(&config_path).expect("valid config");
    let fifo = harness.path("fifo");
    mkfifo(&fifo);
    filled(&harness.path("large.key"), SECRET_CAP + 1);
    for (replacement, problem) in [
        ("fifo", "is a FIFO, not a regular file"),
        ("large.key", "is larger than 64 KiB"),
    ] {
        // Rotated in place after the config was loaded: the worker reads it at use.
        std::fs::remove_file(&key).expect("remove the key");
        std::os::unix::fs::symlink(replacement, &key).expect("link the key");
        let config = config.clone();
        let fetched = rescued(&fifo, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime
                .block_on(bearerd::token(
                    &config,
                    "api",
                    &bearerd::TokenOptions::default(),
                    bearerd::clock::Clock::system(),
                ))
                .map(|_| ())
                .map_err(|error| error.to_string())
        });
        let message = fetched.expect_err("no token from a hostile key file");
        assert!(
            message.contains(&format!("private_key_file {} {problem}", key.display())),
            "{message}"
        );
    }
    assert_eq!(idp.token_request_count(), 0, "nothing was sent");
}

// ---------------------------------------------------------------------------------------------
// A flood of errors.

#[test]
fn forty_thousand_problems_show_the_first_hundred_and_a_count() {
    let harness = Harness::new();
    let mut config_text = String::from("[agent]\n");
    for number in 0..40_000 {
        config_text.push_str(&format!("bogus_{number:05} = 1\n"));
    }
    let config = harness.write("bearerd.toml", &config_text);
    let output = finishes(&["check"], &config);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        101,
        "{}",
        lines[..3.min(lines.len())].join("\n")
    );
    for (number, line) in lines[..100].iter().enumerate() {
        assert!(
            line.starts_with(&format!(
                "{}:{}:1: agent.bogus_{number:05}: unknown key; expected one of: refresh_at,",
                config.display(),
                number + 2
            )),
            "{line}"
        );
    }
    assert_eq!(
        lines[100],
        format!(
            "{}: and 39900 more problems (only the first 100 are shown)",
            config.display()
        )
    );
}

/// `GET path`: the status and the body, or `None` when there was no answer.
fn get(address: &str, path: &str) -> Option<(u16, String)> {
    let response = try_http_get(address, path, Duration::from_secs(30)).ok()?;
    Some((response.status, response.body))
}

/// The value of the first sample of `metric` (a name with its labels) in an exposition.
fn sample(metrics: &str, metric: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(metric)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// A daemon with `/metrics` on and one client, `api`, whose token lives 2 seconds.
struct Reloading {
    idp: TestIdp,
    harness: Harness,
    daemon: Daemon,
    address: String,
}

/// `/metrics` on, and tokens refreshed at half their life.
fn agent() -> Config {
    Config::new()
        .listen("127.0.0.1:0")
        .agent("refresh_at = 0.5")
}

impl Reloading {
    fn start() -> Self {
        let idp = TestIdp::start(IdpSettings::default());
        idp.add_client("api", "api-secret", Duration::from_secs(2));
        let harness = Harness::new();
        harness.write_config(&agent().client(Self::client(&idp)));
        let daemon = Daemon::start(&harness);
        let address = daemon.admin_address();
        daemon.wait_for("token refreshed", 1, Duration::from_secs(10));
        Self {
            idp,
            harness,
            daemon,
            address,
        }
    }

    fn client(idp: &TestIdp) -> Client {
        Client::new("api")
            .token_url(&idp.token_url())
            .client_id("api")
            .secret("api-secret")
            .output("api.token")
    }

    /// Replaces the config by rename, as an editor would.
    fn replace(&self, text: &str) {
        let staging = self.harness.path("bearerd.toml.new");
        std::fs::write(&staging, text).expect("stage");
        std::fs::rename(&staging, self.harness.path("bearerd.toml")).expect("replace");
    }

    /// Replaces the config by 6 MiB of short unknown [agent] keys: within the cap, and
    /// seconds of parsing in a debug build. Returns how many problems it has.
    fn replace_by_huge_invalid(&self) -> usize {
        // The unknown keys follow the [agent] table's own, so they are in it.
        let mut huge = agent().to_string();
        let mut number = 0;
        while huge.len() < 6 << 20 {
            huge.push_str(&format!("k{number:x}=1\n"));
            number += 1;
        }
        huge.push_str(&Config::new().client(Self::client(&self.idp)).to_string());
        self.replace(&huge);
        number
    }
}

/// While a reload reads and validates a multi-megabyte invalid config, the daemon answers
/// `/healthz` and `/metrics` and its 2-second token keeps being refreshed. The proof that an
/// answer came during the validation, not after it: it was asked for after the daemon logged
/// the start of the reload, and it still shows `bearerd_config_last_reload_successful 1`,
/// which the end of the validation sets to 0.
#[test]
fn a_huge_invalid_config_is_validated_while_healthz_answers_and_tokens_refresh() {
    let fixture = Reloading::start();
    let (daemon, address) = (&fixture.daemon, fixture.address.as_str());
    let config = fixture.harness.path("bearerd.toml");
    let problems = fixture.replace_by_huge_invalid();
    daemon.wait_for("reloading (file changed)", 1, Duration::from_secs(10));

    let refreshes = "bearerd_refreshes_total{client=\"api\",result=\"success\"}";
    let mut healthz_during = 0;
    let mut refreshes_during = Vec::new();
    let finished = wait_until(Duration::from_secs(120), || {
        let healthz = get(address, "/healthz");
        let Some((200, metrics)) = get(address, "/metrics") else {
            return false;
        };
        if sample(&metrics, "bearerd_config_last_reload_successful") != Some(1) {
            return true;
        }
        if healthz == Some((200, "ok\n".to_owned())) {
            healthz_during += 1;
        }
        refreshes_during.extend(sample(&metrics, refreshes));
        false
    });
    assert!(
        finished,
        "the reload did not finish; log:\n{}",
        daemon.log()
    );
    assert!(
        healthz_during > 0,
        "no /healthz answered while the config was validated"
    );
    let first = refreshes_during.first().copied().unwrap_or_default();
    let last = refreshes_during.last().copied().unwrap_or_default();
    assert!(
        last > first,
        "no refresh while the config was validated ({} answers, refreshes {first}..{last})",
        refreshes_during.len()
    );

    daemon.wait_for(
        &format!(
            "keeping the running one: {}: and {} more problems",
            config.display(),
            problems - 100
        ),
        1,
        Duration::from_secs(10),
    );
    assert_eq!(daemon.count("configuration reloaded"), 0);
    // The old config keeps running.
    let refreshed = daemon.count("token refreshed");
    daemon.wait_for("token refreshed", refreshed + 1, Duration::from_secs(10));
    let (status, _) = fixture.daemon.terminate();
    assert!(status.success());
}

/// A change that arrives while a slow reload is still validating is loaded after it: a burst
/// of changes ends with the last one applied.
#[test]
fn a_change_during_a_slow_reload_is_loaded_after_it_and_the_last_one_wins() {
    let fixture = Reloading::start();
    fixture.replace_by_huge_invalid();
    fixture
        .daemon
        .wait_for("reloading (file changed)", 1, Duration::from_secs(10));
    let scoped = Reloading::client(&fixture.idp).scope("two");
    fixture.replace(&agent().client(scoped).to_string());
    fixture
        .daemon
        .wait_for("configuration reloaded", 1, Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(10), || {
            fixture
                .idp
                .requests()
                .iter()
                .any(|request| request.params().get("scope").map(String::as_str) == Some("two"))
        }),
        "no request with the last config's scope; log:\n{}",
        fixture.daemon.log()
    );
    let metrics = get(&fixture.address, "/metrics").expect("metrics").1;
    assert_eq!(
        sample(&metrics, "bearerd_config_last_reload_successful"),
        Some(1)
    );
    let (status, _) = fixture.daemon.terminate();
    assert!(status.success());
}

// ---------------------------------------------------------------------------------------------
// Environment variables.

#[test]
fn a_variable_that_is_set_but_not_utf8_is_named_as_such() {
    let harness = Harness::new();
    let client = api().secret("${BEARERD_TEST_NOT_UTF8}").output("api.token");
    let config = harness.write_config(&Config::new().client(client));
    let output = harness
        .command(&["check"])
        .env("BEARERD_TEST_NOT_UTF8", OsStr::from_bytes(b"s3cr\xffet"))
        .output()
        .expect("run bearerd");
    assert_eq!(
        (output.status.code(), text(&output.stderr)),
        (
            Some(2),
            format!(
                "{}:4:17: clients.api.client_secret: environment variable BEARERD_TEST_NOT_UTF8 \
                 is set but is not valid UTF-8\n",
                config.display()
            )
        )
    );
}
