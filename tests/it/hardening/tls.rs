//! Hardening: TLS. A server certificate bearerd cannot trust is a permanent failure named in
//! plain words, against real TLS servers on loopback with certificates `openssl` makes here;
//! and a discovered mTLS alias must be `https` as a discovered token endpoint must.
//! The servers here only shake hands and hand out one fixed token: they check no credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bearerd_idp::IdpSettings;

use crate::harness::pki::{self, Pki};
use crate::harness::{Client, Config, TlsServer};
use crate::harness::{Daemon, Harness, TestIdp, text, wait_until};
use crate::interop::{bearerd, fail_at_runtime, succeed};

/// What the test server issues to every request that gets through the handshake.
const TOKEN: &str = "tls-ok";

/// A TLS server on 127.0.0.1 presenting one certificate chain and answering with a token; its
/// connections count bearerd's attempts.
fn token_server(cert: &Path, key: &Path) -> TlsServer {
    let answer = format!(r#"{{"access_token":"{TOKEN}","token_type":"Bearer","expires_in":300}}"#);
    TlsServer::start(cert, key, &answer)
}

/// A P-256 key at `dir/NAME.key` and a certificate for it at `dir/NAME.pem`, made by
/// `openssl req -x509` with `args` (the subject, the issuer, extensions).
fn certificate(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, PathBuf) {
    let key = pki::ec_key(dir, &format!("{name}.key"));
    let cert = format!("{name}.pem");
    let key_arg = format!("{name}.key");
    let mut all = vec!["req", "-x509", "-new", "-key", &key_arg, "-days", "1"];
    all.extend(args);
    all.extend(["-out", &cert]);
    pki::openssl(dir, &all);
    (dir.join(cert), key)
}

/// A server certificate for 127.0.0.1 signed by the test CA, valid from `start` to `end`
/// (`YYYYMMDDHHMMSSZ`): `openssl ca` is OpenSSL 3.0's way to set both dates.
fn dated_certificate(dir: &Path, name: &str, start: &str, end: &str) -> (PathBuf, PathBuf) {
    let key = pki::ec_key(dir, &format!("{name}.key"));
    let (key_arg, csr, cert) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    pki::openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key_arg,
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-out",
            &csr,
        ],
    );
    let database = format!("{name}.index");
    std::fs::write(dir.join(&database), "").expect("write the CA database");
    let config = format!(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = {database}\nnew_certs_dir = .\n\
         serial = {name}.serial\ndefault_md = sha256\npolicy = any\ncopy_extensions = copy\n\
         unique_subject = no\n[any]\ncommonName = supplied\n"
    );
    std::fs::write(dir.join(format!("{name}.cnf")), config).expect("write the CA config");
    std::fs::write(dir.join(format!("{name}.serial")), "01\n").expect("write the serial");
    pki::openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            &format!("{name}.cnf"),
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            &csr,
            "-startdate",
            start,
            "-enddate",
            end,
            "-out",
            &cert,
        ],
    );
    (dir.join(cert), key)
}

/// `bearerd.toml` with `[agent] backoff_max` and one client `api` posting to `token_url`.
fn config(
    harness: &Harness,
    token_url: &str,
    ca_file: Option<&Path>,
    backoff_max: &str,
) -> PathBuf {
    let mut client = Client::new("api")
        .token_url(token_url)
        .client_id("bot")
        .secret("s")
        .output("api.token");
    if let Some(ca_file) = ca_file {
        client = client.ca_file(ca_file);
    }
    let config = Config::new().backoff("50ms", backoff_max).client(client);
    harness.write_config(&config)
}

/// `run --once` against `server` fails with `expected` after one attempt, logged as permanent,
/// although the deadline would allow many.
fn fails_at_once(harness: &Harness, server: &TlsServer, ca_file: Option<&Path>, expected: &str) {
    let token_url = server.url("/token");
    let config = config(harness, &token_url, ca_file, "100ms");
    let output = fail_at_runtime(bearerd(
        harness,
        &config,
        &["run", "--once", "--deadline", "30s"],
    ));
    let stderr = text(&output.stderr);
    let message = format!("token endpoint {token_url}: {expected}");
    assert!(
        stderr.contains(&message),
        "expected {message:?} in:\n{stderr}"
    );
    assert!(stderr.contains("will not heal"), "{stderr}");
    assert!(
        !stderr.contains("rustls") && !stderr.contains("Other("),
        "{stderr}"
    );
    assert_eq!(server.connections(), 1, "one attempt only:\n{stderr}");
}

#[test]
fn a_self_signed_ca_as_the_server_certificate_fails_at_once_in_plain_words() {
    let harness = Harness::new();
    let dir = harness.dir.path();
    // What `openssl req -x509` makes by default: a self-signed CA, here given as its own CA.
    let (cert, key) = certificate(
        dir,
        "self",
        &[
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
    let server = token_server(&cert, &key);
    fails_at_once(
        &harness,
        &server,
        Some(&cert),
        "the server certificate for 127.0.0.1 is a CA certificate, not a server certificate \
         (a self-signed one from `openssl req -x509` is a CA by default); have the server \
         present a certificate its CA signed, and give ca_file the CA that signed the \
         server's own certificate",
    );
}

#[test]
fn an_unknown_issuer_fails_at_once_in_plain_words() {
    let harness = Harness::new();
    let pki = Pki::create(harness.dir.path());
    let server = token_server(&pki.server_cert, &pki.server_key);
    fails_at_once(
        &harness,
        &server,
        None,
        "the server certificate for 127.0.0.1 is not signed by a trusted CA; set ca_file to \
         the PEM file of the CA that signed it (ca_file is trusted besides the system's CAs)",
    );
}

#[test]
fn a_certificate_for_another_name_fails_at_once_naming_its_names() {
    let harness = Harness::new();
    let dir = harness.dir.path();
    Pki::create(dir);
    let (cert, key) = certificate(
        dir,
        "other",
        &[
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=DNS:other.example,IP:10.1.2.3",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let server = token_server(&cert, &key);
    fails_at_once(
        &harness,
        &server,
        Some(&dir.join("ca.pem")),
        "the server certificate for 127.0.0.1 is for other names (other.example, 10.1.2.3); \
         use one of them in the URL, or have the server present a certificate for 127.0.0.1",
    );
}

#[test]
fn an_expired_or_not_yet_valid_certificate_fails_at_once_with_its_dates() {
    let harness = Harness::new();
    let dir = harness.dir.path();
    Pki::create(dir);
    let ca = dir.join("ca.pem");
    let (cert, key) = dated_certificate(dir, "expired", "20200101000000Z", "20200102000000Z");
    let server = token_server(&cert, &key);
    fails_at_once(
        &harness,
        &server,
        Some(&ca),
        "the server certificate for 127.0.0.1 expired on 2020-01-02T00:00:00Z (this machine's \
         clock reads ",
    );
    let (cert, key) = dated_certificate(dir, "future", "20990101000000Z", "20990102000000Z");
    let server = token_server(&cert, &key);
    fails_at_once(
        &harness,
        &server,
        Some(&ca),
        "the server certificate for 127.0.0.1 is not valid until 2099-01-01T00:00:00Z",
    );
}

#[test]
fn a_correct_chain_still_gets_a_token() {
    let harness = Harness::new();
    let pki = Pki::create(harness.dir.path());
    let server = token_server(&pki.server_cert, &pki.server_key);
    let config = config(&harness, &server.url("/token"), Some(&pki.ca_cert), "100ms");
    succeed(bearerd(&harness, &config, &["run", "--once"]), String::new);
    assert_eq!(harness.read("api.token"), TOKEN);
}

/// The system's roots are still trusted without `ca_file` (SPEC: "TLS is rustls with the
/// system's roots"), here the test CA as the system's bundle, named as OpenSSL lets one.
#[test]
fn the_system_s_roots_are_trusted_without_a_ca_file() {
    let harness = Harness::new();
    let pki = Pki::create(harness.dir.path());
    let server = token_server(&pki.server_cert, &pki.server_key);
    let config = config(&harness, &server.url("/token"), None, "100ms");
    for variable in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
        let mut command = bearerd(&harness, &config, &["run", "--once"]);
        match variable {
            "SSL_CERT_FILE" => command.env(variable, &pki.ca_cert),
            _ => command.env(variable, harness.dir.path()),
        };
        let _ = std::fs::remove_file(harness.path("api.token"));
        succeed(command, String::new);
        assert_eq!(harness.read("api.token"), TOKEN, "{variable}");
    }
}

#[test]
fn the_daemon_retries_a_refused_certificate_at_backoff_max_and_warns_once() {
    let harness = Harness::new();
    let pki = Pki::create(harness.dir.path());
    let server = token_server(&pki.server_cert, &pki.server_key);
    let config = config(&harness, &server.url("/token"), None, "2s");
    let daemon = Daemon::start_with(bearerd(&harness, &config, &["run"]));
    assert!(
        wait_until(Duration::from_secs(60), || server.connections() >= 3),
        "no retries; log:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    let failures: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("token request failed"))
        .collect();
    assert_eq!(failures.len(), 1, "logged once:\n{log}");
    assert!(failures[0].contains("will not heal"), "{log}");
    assert!(
        failures[0].contains("retry_in=2s"),
        "at backoff_max:\n{log}"
    );
    assert!(
        failures[0].contains("is not signed by a trusted CA"),
        "{log}"
    );
}

#[test]
fn a_plain_http_mtls_alias_in_discovery_is_refused_and_never_posted_to() {
    let harness = Harness::new();
    let pki = Pki::create(harness.dir.path());
    let alias = "http://mtls.example/oauth/token";
    let idp = TestIdp::start(IdpSettings {
        accept_unknown_clients: true,
        mtls_token_endpoint: Some(alias.to_owned()),
        ..IdpSettings::default()
    });
    // The endpoint is the client's proxy too: a request for the remote alias would reach it,
    // and be counted, rather than fail to resolve.
    let client = || {
        Client::new("mtls")
            .issuer(&idp.issuer())
            .client_id("mtls-bot")
            .auth_method("tls_client_auth")
            .tls_identity(&pki.client_cert, &pki.client_key)
            .set("proxy", &idp.issuer())
            .output("mtls.token")
    };
    let config = harness.write_config(&Config::new().client(client()));
    let output = fail_at_runtime(bearerd(
        &harness,
        &config,
        &["run", "--once", "--deadline", "30s"],
    ));
    let stderr = text(&output.stderr);
    let message = format!(
        "discovered mtls_endpoint_aliases.token_endpoint: expected an https URL (plain http is \
         allowed only for loopback hosts, or with allow_insecure_http = true), found {alias}"
    );
    assert!(
        stderr.contains(&message),
        "expected {message:?} in:\n{stderr}"
    );
    assert!(stderr.contains("will not heal"), "{stderr}");
    assert_eq!(idp.token_request_count(), 0, "nothing posted to the alias");

    // With allow_insecure_http the alias is used, so the request would have been seen (the
    // endpoint refuses it: it knows no tls_client_auth).
    let config =
        harness.write_config(&Config::new().client(client().line("allow_insecure_http = true")));
    bearerd(&harness, &config, &["run", "--once"])
        .output()
        .expect("run bearerd");
    let posted: Vec<_> = idp
        .requests()
        .into_iter()
        .filter(|request| request.method == "POST")
        .collect();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].header("host"), Some("mtls.example"));
}
