//! A client certificate rotated in place is what the next token request presents: a reload (here
//! caused by the file watch) drops the cached HTTP clients, whose TLS identity was read once.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::{FOR_RESOURCE, bearerd, client, mtls_bot, tls_provider};
use crate::harness::{Config, Daemon, Harness, pki, wait_until};
use crate::oidc::jwt_claims;

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
    let idp = tls_provider(&pki, json!([mtls_bot()]));
    let config = harness.write_config(
        &Config::new().client(
            client("mtls")
                .token_url(&idp.token_endpoint)
                .client_id("mtls-bot")
                .tls_client_auth(&pki)
                .extra_params(FOR_RESOURCE),
        ),
    );
    let daemon = Daemon::start_with(bearerd(&harness, &config, &["run"]));
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
    let (cert_b, key_b) = pki.client_certificate("client-b");
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
