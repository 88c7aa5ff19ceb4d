//! Regression tests for the holes found by trying bearerd as an attacker or a careless
//! operator would (issue "Hardening"); each one failed before its fix. `docs/reliability.md`
//! lists each hole beside the test that proves it closed.

mod admin;
mod durability;
mod hooks;
mod input;
mod state;
mod tls;

use crate::harness::{Client, TestIdp};

/// Client `api` (id `api`, secret `secret`) posting to `idp`, writing `tokens/api.token`.
fn api_client(idp: &TestIdp, secret: &str) -> Client {
    Client::new("api")
        .token_url(&idp.token_url())
        .client_id("api")
        .secret(secret)
        .output("tokens/api.token")
}
