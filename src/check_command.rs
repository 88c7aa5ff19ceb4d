//! `bearerd check`: the report of what a valid configuration would do, one client at a time,
//! and the directories other users could write to. It never shows a secret (a parameter's
//! value may be one: names only) and changes nothing.

use std::fmt::Write as _;

use crate::config::{self, Auth, Config, Endpoint, Grant, JwtAssertion, SecretSource};
use crate::output::Format;
use crate::preflight;
use crate::state;

/// What `bearerd check` prints for `config`.
pub(crate) fn report(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid, {} client(s)",
        config.path.display(),
        config.clients.len()
    );
    let agent = &config.agent;
    let _ = writeln!(
        out,
        "agent: refresh_at {}, http_timeout {}, max_concurrent_requests {}, \
         max_requests_per_second {}, listen {}",
        agent.refresh_at,
        humantime::format_duration(agent.http_timeout),
        agent.max_concurrent_requests,
        agent
            .max_requests_per_second
            .map_or("off".to_owned(), |rate| format!(
                "{rate} per token endpoint host"
            )),
        agent
            .listen
            .map_or("off".to_owned(), |address| address.to_string()),
    );
    for client in &config.clients {
        let _ = writeln!(out, "\nclient {}", client.name);
        let endpoint = match &client.request.endpoint {
            Endpoint::TokenUrl(url) => format!("token_url {}", config::display_url(url)),
            Endpoint::Issuer(url) => {
                format!("issuer {} (OIDC discovery)", config::display_url(url))
            }
        };
        let _ = writeln!(out, "  endpoint   {endpoint}");
        let _ = writeln!(out, "  client_id  {}", client.request.client_id);
        let credential = match &client.request.auth {
            Auth::Secret {
                secret: SecretSource::Inline(_),
                ..
            } => "client_secret (inline)".to_owned(),
            Auth::Secret {
                secret: SecretSource::File { path, .. },
                ..
            } => format!("client_secret_file {}", path.display()),
            Auth::PrivateKeyJwt {
                key_file, key_id, ..
            } => format!(
                "private_key_file {}{}",
                key_file.display(),
                key_id
                    .as_ref()
                    .map_or(String::new(), |kid| format!(" (kid {kid})"))
            ),
            Auth::TlsClientAuth => "client certificate".to_owned(),
            Auth::ClientSecretJwt {
                secret: SecretSource::Inline(_),
                ..
            } => "HS256 assertion signed with client_secret (inline)".to_owned(),
            Auth::ClientSecretJwt {
                secret: SecretSource::File { path, .. },
                ..
            } => format!(
                "HS256 assertion signed with client_secret_file {}",
                path.display()
            ),
            Auth::ClientAssertion {
                file,
                assertion_type,
            } => format!(
                "client_assertion_file {} ({assertion_type}, read at every request)",
                file.display()
            ),
            Auth::Public => "public client (client_id only)".to_owned(),
        };
        let method = client.request.auth_method_name().unwrap_or(
            "from discovery (first supported of client_secret_basic, client_secret_post)",
        );
        let _ = writeln!(out, "  auth       {method}, {credential}");
        let _ = writeln!(out, "  grant      {}", grant(&client.request.grant));
        if let Some(audience) = &client.request.audience {
            let _ = writeln!(out, "  audience   {audience}");
        }
        if let Some(scope) = &client.request.scope {
            let _ = writeln!(out, "  scope      {scope}");
        }
        // Parameter values may carry credentials (an API key): names only.
        for key in client.request.extra_params.keys() {
            let _ = writeln!(out, "  param      {key}");
        }
        for output in &client.outputs {
            let format = match &output.format {
                Format::Env { variable } => format!("env {variable}"),
                other => other.name().to_owned(),
            };
            let _ = writeln!(
                out,
                "  output     {} ({format}, {:04o})",
                output.path.display(),
                output.mode
            );
        }
        let _ = writeln!(
            out,
            "  state      {}",
            state::path(&config.agent, client).display()
        );
    }
    let writable = preflight::writable_directories(config);
    if !writable.is_empty() {
        out.push('\n');
    }
    for (dir, mode) in writable {
        let _ = writeln!(
            out,
            "warning: {} (mode {mode:04o}): {}",
            dir.display(),
            preflight::WRITABLE_DIRECTORY
        );
    }
    out
}

/// The grant in one line: its name and the files it reads (never their content).
fn grant(grant: &Grant) -> String {
    match grant {
        Grant::ClientCredentials => "client_credentials".to_owned(),
        Grant::TokenExchange {
            subject,
            actor,
            requested_token_type,
        } => {
            let mut line = format!(
                "token_exchange, subject_token_file {} ({})",
                subject.path.display(),
                subject.token_type
            );
            if let Some(actor) = actor {
                line.push_str(&format!(
                    ", actor_token_file {} ({})",
                    actor.path.display(),
                    actor.token_type
                ));
            }
            if let Some(requested) = requested_token_type {
                line.push_str(&format!(", requested_token_type {requested}"));
            }
            line
        }
        Grant::JwtBearer(JwtAssertion::File(path)) => {
            format!("jwt_bearer, assertion_file {}", path.display())
        }
        Grant::JwtBearer(JwtAssertion::Signed {
            key_file,
            issuer,
            subject,
            audience,
            ..
        }) => format!(
            "jwt_bearer, assertion signed with private_key_file {} (iss {}, sub {}, aud {})",
            key_file.display(),
            issuer.as_deref().unwrap_or("= client_id"),
            subject.as_deref().unwrap_or("= client_id"),
            audience.as_deref().unwrap_or("= the token endpoint"),
        ),
    }
}
