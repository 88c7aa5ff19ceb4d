//! Test fixtures of the config: an environment, a parser for a fixed path, a full example.
//! Tests only; nothing here is built into the daemon.

use std::env::VarError;
use std::path::Path;

use super::{Config, ConfigError};

pub(super) fn env(name: &str) -> Result<String, VarError> {
    match name {
        "TASKLIST_SECRET" => Ok("s3cr3t +/%:&= x".to_owned()),
        "EMPTY" => Ok(String::new()),
        "NOT_UTF8" => Err(VarError::NotUnicode(std::ffi::OsString::from("x"))),
        _ => Err(VarError::NotPresent),
    }
}

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/bearerd/bearerd.toml"), text, &env)
}

pub(super) fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors"),
        Err(error) => error.to_string().lines().map(str::to_owned).collect(),
    }
}

pub(super) const TASKLIST: &str = r#"
[agent]
refresh_at = 0.75
listen = "127.0.0.1:9161"
log_format = "json"
http_timeout = "5s"
max_concurrent_requests = 2

[clients.tasklist]
token_url = "https://login.cloud.camunda.io/oauth/token"
client_id = "tasklist-bot"
client_secret = "${TASKLIST_SECRET}"
audience = "tasklist.camunda.io"
scope = "tasks:read tasks:write"
auth_method = "client_secret_json"
extra_params = { resource = "https://api.example.com" }

[[clients.tasklist.output]]
path = "/run/bearerd/tasklist.token"

[[clients.tasklist.output]]
path = "tasklist.env"
format = "env"
mode = "0640"

[[clients.tasklist.output]]
path = "/run/bearerd/tasklist.header"
format = "header"
"#;
