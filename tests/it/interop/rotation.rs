//! A client certificate rotated in place is what the next token request presents: a reload (here
//! caused by the file watch) drops the cached HTTP clients, whose TLS identity was read once.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::{PROXY_VARIABLES, RESOURCE, client_toml, quoted, tls_provider};
use crate::harness::{Daemon, Harness, text, wait_until};
use crate::oidc::jwt_claims;

use super::pki;

/// A second client certificate signed by the test CA in `dir`, with the same subject as the first
/// and a new key: `(certificate, key)` in `dir`.
fn second_client_certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = pki::ec_key(dir, "client-b.key");
    let output = Command::new("openssl")
        .args(["req", "-x509", "-new", "-key", "client-b.key"])
        .args(["-CA", "ca.pem", "-CAkey", "ca.key", "-days", "1"])
        .args(["-subj", &format!("/{}", pki::CLIENT_SUBJECT)])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=clientAuth"])
        .args(["-out", "client-b.pem"])
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(output.status.success(), "openssl: {}", text(&output.stderr));
    (dir.join("client-b.pem"), key)
}

/// The `cnf.x5t#S256` of the token in `file`, if it holds one.
fn bound_thumbprint(file: &Path) -> Option<String> {
    let token = std::fs::read_to_string(file).ok()?;
    if token.is_empty() {
        return None;
    }
    jwt_claims(&token)["cnf"]["x5t#S256"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn a_client_certificate_rotated_in_place_is_presented_after_the_reload() {
    let harness = Harness::new();
    let dir = harness.dir.path();
    let pki = pki::Pki::create(dir);
    let idp = tls_provider(
        &pki,
        json!([{
            "client_id": "mtls-bot",
            "token_endpoint_auth_method": "tls_client_auth",
            "tls_client_auth_subject_dn": pki::CLIENT_SUBJECT,
            "tls_client_certificate_bound_access_tokens": true,
        }]),
    );
    let path = |path: &Path| quoted(path.to_str().expect("UTF-8 path"));
    let config = harness.write(
        "bearerd.toml",
        &client_toml(
            "mtls",
            &format!(
                "token_url = {}\nclient_id = \"mtls-bot\"\nauth_method = \"tls_client_auth\"\n\
                 ca_file = {}\ntls_cert_file = {}\ntls_key_file = {}\n\
                 extra_params = {{ resource = {} }}",
                quoted(&idp.token_endpoint),
                path(&pki.ca_cert),
                path(&pki.client_cert),
                path(&pki.client_key),
                quoted(RESOURCE)
            ),
        ),
    );
    let mut command = harness.command_with_config(&config, &["run"]);
    for name in PROXY_VARIABLES {
        command.env_remove(name);
    }
    let daemon = Daemon::start_with(command);
    let token_file = harness.path("mtls.token");
    let first_thumbprint = pki.client_thumbprint();

    let mut first = None;
    let issued = wait_until(Duration::from_secs(20), || {
        first = bound_thumbprint(&token_file);
        first.is_some()
    });
    assert!(
        issued,
        "no first token\n--- bearerd ---\n{}\n--- server ---\n{}",
        daemon.log(),
        idp.log()
    );
    assert_eq!(first.as_deref(), Some(first_thumbprint.as_str()));
    let first_token = harness.read("mtls.token");

    // Certificate B: same subject, same CA, a new key. The key first: only the certificate is
    // watched, and its change must find the new key already in place.
    let (cert_b, key_b) = second_client_certificate(dir);
    let reloads = daemon.count("configuration reloaded");
    std::fs::write(&pki.client_key, std::fs::read(&key_b).expect("key B")).expect("write key");
    std::fs::write(&pki.client_cert, std::fs::read(&cert_b).expect("cert B")).expect("write cert");
    let second_thumbprint = pki.client_thumbprint();
    assert_ne!(first_thumbprint, second_thumbprint);
    daemon.wait_for(
        "configuration reloaded",
        reloads + 1,
        Duration::from_secs(20),
    );

    // The client's settings did not change, so its worker is kept; refresh it now.
    daemon.signal(rustix::process::Signal::USR1);
    let refreshed = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&token_file).is_ok_and(|token| token != first_token)
    });
    assert!(
        refreshed,
        "the token was not refreshed after SIGUSR1\n--- bearerd ---\n{}\n--- server ---\n{}",
        daemon.log(),
        idp.log()
    );
    assert_eq!(
        bound_thumbprint(&token_file).as_deref(),
        Some(second_thumbprint.as_str()),
        "the new token is bound to the rotated certificate\n--- bearerd ---\n{}",
        daemon.log()
    );
    let (status, _) = daemon.terminate();
    assert!(status.success(), "{status:?}");
}
