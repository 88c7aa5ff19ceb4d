//! OIDC discovery: the issuer's `/.well-known/openid-configuration` fetched and checked (the
//! issuer it names, the token endpoint, the auth methods, the mTLS alias). It neither caches
//! the document nor decides whether a discovered URL may be used: the session does both.

use std::time::SystemTime;

use reqwest::header::ACCEPT;
use serde_json::Value;
use url::Url;

use super::error::FetchError;
use super::http::{read_response, request_failed};
use super::response::{error_status, excerpt, json_object, status_line};
use crate::config::display_url;

/// What an OIDC discovery document says about the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Discovery {
    pub(super) token_endpoint: Url,
    /// `token_endpoint_auth_methods_supported`; when absent, `["client_secret_basic"]` (OIDC
    /// Discovery §3).
    pub(super) auth_methods: Vec<String>,
    /// `mtls_endpoint_aliases.token_endpoint` (RFC 8705 §5).
    pub(super) mtls_token_endpoint: Option<Url>,
}

/// `{issuer without one trailing slash}/.well-known/openid-configuration`.
fn discovery_url(issuer: &Url) -> Result<Url, String> {
    let base = issuer.as_str();
    let base = base.strip_suffix('/').unwrap_or(base);
    let text = format!("{base}/.well-known/openid-configuration");
    Url::parse(&text).map_err(|error| format!("issuer {}: {error}", display_url(issuer)))
}

/// Fetches and checks `issuer`'s OIDC discovery document. An HTTP-date `Retry-After` is taken
/// relative to the response's `Date` (this function is given no `now`).
pub(super) async fn discover(
    http: &reqwest::Client,
    issuer: &Url,
) -> Result<Discovery, FetchError> {
    let url = discovery_url(issuer).map_err(FetchError::permanent)?;
    let shown = display_url(&url);
    let response = http
        .get(url)
        .header(ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| request_failed(&format!("discovery document {shown}"), error))?;
    let response = read_response(response).await;
    let prefix = format!("discovery document {shown} answered ");
    let response = match response {
        Ok(response) => response,
        Err(error) => return Err(error.map_message(|message| format!("{prefix}{message}"))),
    };
    let server_now = response
        .date
        .as_deref()
        .and_then(|date| httpdate::parse_http_date(date).ok());
    parse_discovery(
        issuer,
        response.status,
        response.retry_after.as_deref(),
        response.content_type.as_deref(),
        &response.body,
        server_now,
    )
    .map_err(|error| error.map_message(|message| format!("{prefix}{message}")))
}

/// The discovery response checked and read. `now` only converts an HTTP-date `Retry-After`
/// (without it, such a header is ignored).
fn parse_discovery(
    issuer: &Url,
    status: u16,
    retry_after: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    now: Option<SystemTime>,
) -> Result<Discovery, FetchError> {
    if !(200..300).contains(&status) {
        return Err(error_status(status, retry_after, body, now));
    }
    let document = json_object(status, content_type, body)?;
    let configured = trim_one_slash(issuer.as_str());
    let announced = document
        .get("issuer")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            FetchError::permanent(format!("{} but has no issuer", status_line(status)))
        })?;
    let announced_normal = Url::parse(announced)
        .map(|url| url.as_str().to_owned())
        .unwrap_or_else(|_| announced.to_owned());
    if trim_one_slash(&announced_normal) != configured {
        return Err(FetchError::permanent(format!(
            "{} but names issuer {:?}, not the configured {:?}",
            status_line(status),
            excerpt(announced.as_bytes()),
            configured
        )));
    }
    let endpoint = |value: Option<&Value>, name: &str| -> Result<Option<Url>, FetchError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let text = value.as_str().ok_or_else(|| {
            FetchError::permanent(format!(
                "{} but {name} is not a string",
                status_line(status)
            ))
        })?;
        let url = Url::parse(text).map_err(|error| {
            FetchError::permanent(format!(
                "{} but {name} {:?} is not a URL: {error}",
                status_line(status),
                excerpt(text.as_bytes())
            ))
        })?;
        Ok(Some(url))
    };
    let token_endpoint =
        endpoint(document.get("token_endpoint"), "token_endpoint")?.ok_or_else(|| {
            FetchError::permanent(format!("{} but has no token_endpoint", status_line(status)))
        })?;
    let mtls_token_endpoint = endpoint(
        document
            .get("mtls_endpoint_aliases")
            .and_then(|aliases| aliases.get("token_endpoint")),
        "mtls_endpoint_aliases.token_endpoint",
    )?;
    let auth_methods = match document.get("token_endpoint_auth_methods_supported") {
        Some(Value::Array(methods)) => methods
            .iter()
            .filter_map(|method| method.as_str().map(str::to_owned))
            .collect(),
        _ => vec!["client_secret_basic".to_owned()],
    };
    Ok(Discovery {
        token_endpoint,
        auth_methods,
        mtls_token_endpoint,
    })
}

fn trim_one_slash(text: &str) -> &str {
    text.strip_suffix('/').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bearerd_idp::{Idp, IdpSettings};

    use super::*;
    use crate::oauth::fixtures::{http, now};

    fn issuer() -> Url {
        Url::parse("https://idp.example.com/realms/main").expect("url")
    }

    fn discovery(body: &Value) -> Result<Discovery, FetchError> {
        parse_discovery(
            &issuer(),
            200,
            None,
            Some("application/json"),
            body.to_string().as_bytes(),
            Some(now()),
        )
    }

    #[test]
    fn discovery_reads_the_token_endpoint_and_methods() {
        let found = discovery(&serde_json::json!({
            "issuer": "https://idp.example.com/realms/main/",
            "token_endpoint": "https://idp.example.com/realms/main/token",
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_post"],
            "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.example.com/token"},
        }))
        .expect("discovery");
        assert_eq!(
            found,
            Discovery {
                token_endpoint: Url::parse("https://idp.example.com/realms/main/token")
                    .expect("url"),
                auth_methods: vec!["private_key_jwt".into(), "client_secret_post".into()],
                mtls_token_endpoint: Some(
                    Url::parse("https://mtls.example.com/token").expect("url")
                ),
            }
        );
        let plain = discovery(&serde_json::json!({
            "issuer": "https://idp.example.com/realms/main",
            "token_endpoint": "https://idp.example.com/t",
        }))
        .expect("discovery");
        assert_eq!(plain.auth_methods, ["client_secret_basic"]);
        assert_eq!(plain.mtls_token_endpoint, None);
        assert_eq!(
            discovery_url(&Url::parse("https://a.example/r/").expect("url"))
                .expect("url")
                .as_str(),
            "https://a.example/r/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url(&issuer()).expect("url").as_str(),
            "https://idp.example.com/realms/main/.well-known/openid-configuration"
        );
    }

    #[test]
    fn discovery_refuses_a_foreign_issuer_or_a_missing_endpoint() {
        let foreign = discovery(&serde_json::json!({
            "issuer": "https://evil.example.com/realms/main",
            "token_endpoint": "https://evil.example.com/token",
        }))
        .expect_err("mismatch");
        assert!(foreign.is_permanent());
        assert!(foreign.message().contains("evil.example.com"), "{foreign}");
        let missing =
            discovery(&serde_json::json!({"issuer": issuer().as_str()})).expect_err("no endpoint");
        assert!(missing.message().contains("no token_endpoint"), "{missing}");
        let bad = discovery(&serde_json::json!({
            "issuer": issuer().as_str(), "token_endpoint": "not a url"
        }))
        .expect_err("bad url");
        assert!(bad.is_permanent());
        let error =
            parse_discovery(&issuer(), 503, Some("4"), None, b"down", None).expect_err("503");
        assert_eq!(error.retry_after(), Some(Duration::from_secs(4)));
        assert_eq!(error.message(), "503 Service Unavailable: down");
    }

    #[tokio::test]
    async fn discover_finds_the_endpoint() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        let issuer = Url::parse(&idp.issuer()).expect("url");
        let found = discover(&http(), &issuer).await.expect("discovery");
        assert_eq!(found.token_endpoint.as_str(), idp.token_url());
        assert_eq!(
            found.auth_methods,
            [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt"
            ]
        );
        let wrong = Url::parse(&format!("{}/realms/x", idp.issuer())).expect("url");
        let error = discover(&http(), &wrong).await.expect_err("404");
        assert!(error.endpoint_unreachable(), "{error}");
        assert!(
            error.message().starts_with(&format!(
                "discovery document {}/realms/x/.well-known/openid-configuration answered 404",
                idp.issuer()
            )),
            "{error}"
        );
    }
}
