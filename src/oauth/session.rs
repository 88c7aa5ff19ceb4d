//! What a worker asks for: a [`Session`] gets a token for one client's request settings, with
//! the discovery document cached (and dropped when the endpoint stops answering), discovered
//! URLs checked, the credentials as they are now and the HTTP client for its TLS settings. It
//! makes one request per call and never retries or sleeps: the worker holds the place in flight
//! and owns the retry loop.

use std::time::Duration;

use url::Url;

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
    /// Boxed: most clients name a `token_url`, and an idle worker should not carry the space.
    discovery: Option<Box<Discovery>>,
}

impl Session {
    /// A session that has discovered nothing yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Where the next request for `spec` goes: the configured or the discovered token
    /// endpoint, or, before discovery, the issuer (whose discovery document is fetched first
    /// and is then followed at once by the token request).
    pub(crate) fn next_url<'a>(&'a self, spec: &'a RequestSpec) -> &'a Url {
        match (&spec.endpoint, &self.discovery) {
            (Endpoint::TokenUrl(url), _) => url,
            (Endpoint::Issuer(_), Some(discovery)) => token_endpoint(spec, discovery),
            (Endpoint::Issuer(issuer), None) => issuer,
        }
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
                    Some(discovery) => Discovery::clone(discovery),
                    None => {
                        let discovery = discover(&http, issuer).await?;
                        check_discovered_urls(spec, &discovery)?;
                        self.discovery = Some(Box::new(discovery.clone()));
                        discovery
                    }
                };
                let url = token_endpoint(spec, &discovery).clone();
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

/// The discovered endpoint `spec` posts to: the mTLS alias for `tls_client_auth` when there
/// is one, else the token endpoint.
fn token_endpoint<'a>(spec: &RequestSpec, discovery: &'a Discovery) -> &'a Url {
    match (&spec.auth, &discovery.mtls_token_endpoint) {
        (Auth::TlsClientAuth, Some(mtls)) => mtls,
        _ => &discovery.token_endpoint,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: &str) -> RequestSpec {
        let text = format!(
            "[clients.api]\n{endpoint}\nclient_id = \"api\"\nclient_secret = \"s\"\n\
             auth_method = \"client_secret_post\"\n\
             [[clients.api.output]]\npath = \"/run/api.token\"\n"
        );
        let config = crate::config::Config::parse(
            std::path::Path::new("/etc/bearerd/bearerd.toml"),
            &text,
            &|_| Err(std::env::VarError::NotPresent),
        )
        .expect("valid config");
        config.clients[0].request.clone()
    }

    /// The request rate is counted under the host a request goes to: the configured token
    /// URL, the issuer while nothing is discovered, then the discovered token endpoint.
    #[test]
    fn the_next_request_goes_to_the_configured_or_the_discovered_endpoint() {
        let configured = spec("token_url = \"https://login.example.com/oauth/token\"");
        let session = Session::new();
        assert_eq!(
            session.next_url(&configured).as_str(),
            "https://login.example.com/oauth/token"
        );

        let issued = spec("issuer = \"https://idp.example.com/realms/main\"");
        let mut session = Session::new();
        assert_eq!(
            session.next_url(&issued).as_str(),
            "https://idp.example.com/realms/main"
        );
        session.discovery = Some(Box::new(Discovery {
            token_endpoint: Url::parse("https://tokens.example.net:8443/token").expect("url"),
            auth_methods: vec!["client_secret_post".to_owned()],
            mtls_token_endpoint: Some(Url::parse("https://mtls.example.net/token").expect("url")),
        }));
        assert_eq!(
            session.next_url(&issued).as_str(),
            "https://tokens.example.net:8443/token"
        );
    }
}
