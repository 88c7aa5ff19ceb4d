//! What a worker asks for: a [`Session`] gets a token for one client's request settings, with
//! the discovery document cached (and dropped when the endpoint stops answering), discovered
//! URLs checked, the credentials as they are now and the HTTP client for its TLS settings. It
//! makes one request per call and never retries or sleeps: the worker holds the place in flight
//! and owns the retry loop.

use std::time::Duration;

use super::credentials::Credentials;
use super::discovery::{Discovery, discover};
use super::error::FetchError;
use super::grant::GrantRequest;
use super::http::HttpClients;
use super::request::{TokenRequest, request_token};
use crate::clock::Clock;
use crate::config::{Auth, Endpoint, RequestSpec};
use crate::token::Token;

/// A client's connection to its authorization server: the discovered endpoint is cached
/// and dropped when the endpoint stops answering. One session serves one client's settings.
#[derive(Default)]
pub(crate) struct Session {
    discovery: Option<Discovery>,
}

impl Session {
    /// A session that has discovered nothing yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// One token request for `spec` (after discovery, when it names an issuer), over the HTTP
    /// client `http_clients` holds for its TLS settings. `spec` is the same at every call: the
    /// discovery document cached is its issuer's. `clock` is read once, when the request is
    /// built: it stamps the token and the client assertion. `default_lifetime` applies when the
    /// response says nothing about expiry.
    pub(crate) async fn fetch(
        &mut self,
        spec: &RequestSpec,
        http_clients: &HttpClients,
        clock: &Clock,
        default_lifetime: Duration,
    ) -> Result<Token, FetchError> {
        let http = http_clients
            .for_endpoint(&spec.endpoint, &spec.tls)
            .map_err(FetchError::permanent)?;
        let (token_url, discovered_methods) = match &spec.endpoint {
            Endpoint::TokenUrl(url) => (url.clone(), None),
            Endpoint::Issuer(issuer) => {
                let discovery = match &self.discovery {
                    Some(discovery) => discovery.clone(),
                    None => {
                        let discovery = discover(&http, issuer).await?;
                        check_discovered_urls(spec, &discovery)?;
                        self.discovery = Some(discovery.clone());
                        discovery
                    }
                };
                let url = match (&spec.auth, &discovery.mtls_token_endpoint) {
                    (Auth::TlsClientAuth, Some(mtls)) => mtls.clone(),
                    _ => discovery.token_endpoint.clone(),
                };
                (url, Some(discovery.auth_methods))
            }
        };
        let now = clock.now();
        // Token files are read here, for this request only, and checked against `now`.
        let credentials =
            Credentials::current(spec, discovered_methods.as_deref(), &token_url, now)?;
        let grant = GrantRequest::current(&spec.grant, &spec.client_id, &token_url, now)?;
        let request = TokenRequest {
            token_url: &token_url,
            client_id: &spec.client_id,
            credentials,
            grant,
            audience: spec.audience.as_deref(),
            scope: spec.scope.as_deref(),
            extra_params: &spec.extra_params,
        };
        let result = request_token(&http, &request, now, default_lifetime).await;
        if let Err(error) = &result
            && error.endpoint_unreachable()
        {
            self.discovery = None;
        }
        result
    }
}

/// A discovered URL this client will post to must pass the check a configured `token_url`
/// passes: `https`, unless loopback or `allow_insecure_http`. The mTLS alias is used (and so
/// checked) only by `tls_client_auth` clients.
fn check_discovered_urls(spec: &RequestSpec, discovery: &Discovery) -> Result<(), FetchError> {
    let mut used = vec![("token_endpoint", &discovery.token_endpoint)];
    if let (Auth::TlsClientAuth, Some(alias)) = (&spec.auth, &discovery.mtls_token_endpoint) {
        used.push(("mtls_endpoint_aliases.token_endpoint", alias));
    }
    for (name, url) in used {
        crate::config::check_url_scheme(url, spec.allow_insecure_http)
            .map_err(|message| FetchError::permanent(format!("discovered {name}: {message}")))?;
    }
    Ok(())
}
