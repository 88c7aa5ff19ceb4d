//! One token request: a [`TokenRequest`] (what is asked for, by which grant, with which
//! credentials) built into the token POST (a form, or a JSON body), sent once, and its
//! response turned into a [`Token`] or a [`FetchError`] with every credential it carried (the
//! client secret, the assertions bearerd signed, the token files' contents) redacted from
//! every message. It never retries, sleeps, writes files or reads the clock: `now` is an
//! argument.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Map, Value};
use url::Url;
use url::form_urlencoded;

use super::credentials::{Credentials, basic_authorization};
use super::error::FetchError;
use super::grant::{BearerAssertion, GrantRequest};
use super::http::{cause, read_response, request_failed};
use super::jwt::{
    ASSERTION_TYPE, GrantClaims, client_assertion, grant_assertion, secret_assertion,
};
use super::response::{parse_response, redact_bytes};
use crate::config::display_url;
use crate::secret::Secret;
use crate::token::Token;

/// One token request, described.
#[derive(Clone, Debug)]
pub(super) struct TokenRequest<'a> {
    pub(super) token_url: &'a Url,
    pub(super) client_id: &'a str,
    pub(super) credentials: Credentials,
    pub(super) grant: GrantRequest,
    pub(super) audience: Option<&'a str>,
    pub(super) scope: Option<&'a str>,
    /// Sent after the standard parameters, in key order.
    pub(super) extra_params: &'a BTreeMap<String, String>,
}

/// A request ready to send, with the forms in which a server may echo what it carries.
struct Built {
    request: reqwest::Request,
    /// Every credential in the request, in each form a server may echo it (as is,
    /// form-encoded, JSON-escaped, inside the Basic credentials); longest first.
    echoable: Vec<String>,
}

/// Makes one token request. `now` stamps the token and the assertions bearerd signs and
/// converts an HTTP-date `Retry-After`; `default_lifetime` applies when the response says
/// nothing about expiry.
pub(super) async fn request_token(
    http: &reqwest::Client,
    request: &TokenRequest<'_>,
    now: SystemTime,
    default_lifetime: Duration,
) -> Result<Token, FetchError> {
    let shown = display_url(request.token_url);
    // Only the secret can be in a build error (an assertion could not be signed).
    let mut echoable = match &request.credentials {
        Credentials::Basic(secret)
        | Credentials::Post(secret)
        | Credentials::Json(secret)
        | Credentials::SecretJwt { secret, .. } => echoable_forms(secret),
        _ => Vec::new(),
    };
    let result = async {
        let built = build_request(http, request, now)?;
        echoable = built.echoable;
        let response = http
            .execute(built.request)
            .await
            .map_err(|error| request_failed(&format!("token endpoint {shown}"), error))?;
        let prefix = format!("token endpoint {shown} answered ");
        let mut response = read_response(response)
            .await
            .map_err(|error| error.map_message(|message| format!("{prefix}{message}")))?;
        // An error body is quoted (and perhaps cut short, which would defeat redacting the
        // message afterwards): redact it first. A 2xx body is parsed as sent, since it holds
        // the token; only the error it may become is read again from its redacted form.
        let success = (200..300).contains(&response.status);
        if !success {
            response.body = redact_body(&response.body, &echoable);
        }
        let parse = |body: &[u8]| {
            parse_response(
                response.status,
                response.retry_after.as_deref(),
                response.content_type.as_deref(),
                body,
                now,
                default_lifetime,
            )
        };
        match parse(&response.body) {
            Err(error) if success => match parse(&redact_body(&response.body, &echoable)) {
                Err(redacted) => Err(redacted),
                Ok(_) => Err(error),
            },
            parsed => parsed,
        }
        .map_err(|error| error.map_message(|message| format!("{prefix}{message}")))
    }
    .await;
    result.map_err(|error| {
        error.map_message(|message| {
            echoable
                .iter()
                .fold(message, |message, form| message.replace(form, "[redacted]"))
        })
    })
}

/// `body` with every form in `echoable` redacted, as bytes and, when it is JSON, inside every
/// decoded string too: a JSON escape the forms miss (`\/`, `\u0041`) is undone when a message
/// quotes the string, and perhaps cut short, past what redacting the message could catch.
fn redact_body(body: &[u8], echoable: &[String]) -> Vec<u8> {
    fn redact(value: &mut Value, echoable: &[String]) {
        let fold = |text: &str| {
            echoable.iter().fold(text.to_owned(), |text, form| {
                text.replace(form, "[redacted]")
            })
        };
        match value {
            Value::String(text) => *text = fold(text),
            Value::Array(items) => items.iter_mut().for_each(|item| redact(item, echoable)),
            Value::Object(object) => {
                *object = std::mem::take(object)
                    .into_iter()
                    .map(|(key, mut value)| {
                        redact(&mut value, echoable);
                        (fold(&key), value)
                    })
                    .collect();
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    let bytes = redact_bytes(body, echoable);
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut value) => {
            redact(&mut value, echoable);
            serde_json::to_vec(&value).unwrap_or(bytes)
        }
        Err(_) => bytes,
    }
}

/// The forms in which a server may echo `value`: as is, form-encoded, JSON-escaped and
/// HTML-escaped. None for a value under 4 bytes (redacting it would garble messages and hide
/// nothing).
fn echoable_forms(value: &Secret) -> Vec<String> {
    let value = value.expose();
    if value.len() < 4 {
        return Vec::new();
    }
    let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let json = Value::from(value).to_string();
    let json = json
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(&json)
        .to_owned();
    let mut forms = vec![value.to_owned(), encoded, json];
    forms.extend(html_escaped(value));
    forms
}

/// `value` as an HTML error page may quote it (a proxy's or a framework's page that echoes
/// what it was sent): `&`, `<` and `>` escaped, and quotes as they are or in each spelling
/// templates use (`&quot;` or `&#34;`; `&#39;`, `&#x27;` or `&apos;`). None when `value` has
/// nothing to escape: its plain form covers it.
fn html_escaped(value: &str) -> Vec<String> {
    if !value.contains(['&', '<', '>', '"', '\'']) {
        return Vec::new();
    }
    let base = value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let mut forms = vec![base.clone()];
    for double in ["&quot;", "&#34;"] {
        for single in ["&#39;", "&#x27;", "&apos;"] {
            forms.push(base.replace('"', double).replace('\'', single));
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

/// The HTTP request for `request`, without sending it, and what in it a server may echo.
fn build_request(
    http: &reqwest::Client,
    request: &TokenRequest<'_>,
    now: SystemTime,
) -> Result<Built, FetchError> {
    let mut authorization = None;
    let mut sensitive: Vec<Secret> = Vec::new();
    let mut echoable: Vec<String> = Vec::new();
    let mut params: Vec<(&str, String)> = vec![("grant_type", request.grant.grant_type().into())];
    match &request.grant {
        GrantRequest::ClientCredentials => {}
        GrantRequest::TokenExchange {
            subject_token,
            subject_token_type,
            actor,
            requested_token_type,
        } => {
            params.push(("subject_token", subject_token.expose().to_owned()));
            params.push(("subject_token_type", subject_token_type.clone()));
            sensitive.push(subject_token.clone());
            if let Some((actor_token, actor_token_type)) = actor {
                params.push(("actor_token", actor_token.expose().to_owned()));
                params.push(("actor_token_type", actor_token_type.clone()));
                sensitive.push(actor_token.clone());
            }
            if let Some(requested) = requested_token_type {
                params.push(("requested_token_type", requested.clone()));
            }
        }
        GrantRequest::JwtBearer(assertion) => {
            let assertion = match assertion {
                BearerAssertion::Read(assertion) => assertion.clone(),
                BearerAssertion::Sign {
                    key_pem,
                    key_id,
                    issuer,
                    subject,
                    audience,
                } => {
                    let claims = GrantClaims {
                        issuer,
                        subject,
                        audience,
                        scope: request.scope,
                    };
                    grant_assertion(key_pem, key_id.as_deref(), &claims, now).map_err(
                        |message| FetchError::permanent(format!("jwt_bearer assertion: {message}")),
                    )?
                }
            };
            params.push(("assertion", assertion.expose().to_owned()));
            sensitive.push(assertion);
        }
    }
    let client_assertion_of = match &request.credentials {
        Credentials::Basic(secret) => {
            authorization = Some(basic_authorization(request.client_id, secret)?);
            let id: String =
                form_urlencoded::byte_serialize(request.client_id.as_bytes()).collect();
            let encoded: String =
                form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect();
            if secret.expose().len() >= 4 {
                echoable.push(STANDARD.encode(format!("{id}:{encoded}")));
            }
            sensitive.push(secret.clone());
            None
        }
        Credentials::Post(secret) | Credentials::Json(secret) => {
            params.push(("client_id", request.client_id.to_owned()));
            params.push(("client_secret", secret.expose().to_owned()));
            sensitive.push(secret.clone());
            None
        }
        Credentials::PrivateKeyJwt {
            key_pem,
            key_id,
            assertion_audience,
        } => {
            let assertion = client_assertion(
                key_pem,
                key_id.as_deref(),
                request.client_id,
                assertion_audience,
                now,
            )
            .map_err(|message| FetchError::permanent(format!("private_key_jwt: {message}")))?;
            Some((ASSERTION_TYPE, assertion))
        }
        Credentials::SecretJwt {
            secret,
            assertion_audience,
        } => {
            let assertion = secret_assertion(secret, request.client_id, assertion_audience, now)
                .map_err(|message| {
                    FetchError::permanent(format!("client_secret_jwt: {message}"))
                })?;
            // The secret itself is not sent, but a server may still quote it.
            sensitive.push(secret.clone());
            Some((ASSERTION_TYPE, assertion))
        }
        Credentials::ClientAssertion {
            assertion,
            assertion_type,
        } => Some((assertion_type.as_str(), assertion.clone())),
        Credentials::TlsClientAuth | Credentials::Public => {
            params.push(("client_id", request.client_id.to_owned()));
            None
        }
    };
    if let Some((assertion_type, assertion)) = client_assertion_of {
        params.push(("client_id", request.client_id.to_owned()));
        params.push(("client_assertion_type", assertion_type.to_owned()));
        params.push(("client_assertion", assertion.expose().to_owned()));
        sensitive.push(assertion);
    }
    if let Some(audience) = request.audience {
        params.push(("audience", audience.to_owned()));
    }
    if let Some(scope) = request.scope {
        params.push(("scope", scope.to_owned()));
    }
    for (name, value) in request.extra_params {
        params.push((name, value.clone()));
    }
    let (content_type, body) = if matches!(request.credentials, Credentials::Json(_)) {
        let object: Map<String, Value> = params
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Value::from(value.as_str())))
            .collect();
        ("application/json", Value::Object(object).to_string())
    } else {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(params.iter());
        ("application/x-www-form-urlencoded", form.finish())
    };
    let mut builder = http
        .post(request.token_url.clone())
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, content_type)
        .body(body);
    if let Some(authorization) = authorization {
        builder = builder.header(AUTHORIZATION, authorization);
    }
    let request = builder.build().map_err(|error| {
        FetchError::permanent(format!(
            "cannot build the request to {}: {}",
            display_url(request.token_url),
            cause(error)
        ))
    })?;
    echoable.extend(sensitive.iter().flat_map(echoable_forms));
    echoable.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    echoable.dedup();
    Ok(Built { request, echoable })
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use bearerd_idp::{Fault, Idp, IdpSettings, KeyAlgorithm};
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;

    use super::*;
    use crate::config::TlsSettings;
    use crate::oauth::fixtures::{
        DEFAULT, EC_CERT, EC_P384_PKCS8, EC_SEC1, RSA_PKCS1, RSA_PKCS8, http, now,
    };
    use crate::oauth::http::{Roots, USER_AGENT, http_client};
    use crate::oauth::jwt::sec1_to_pkcs8;
    use crate::oauth::response::jwt_expiry;
    use crate::secret::Secret;

    // ---- the wire ----

    /// A client for building requests only (the system roots are slow to load).
    fn bare() -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .build()
            .expect("client")
    }

    fn wire(credentials: Credentials) -> reqwest::Request {
        let url = Url::parse("https://idp.example.com/token").expect("url");
        let extra = BTreeMap::from([("resource".to_owned(), "https://api/x".to_owned())]);
        let request = TokenRequest {
            token_url: &url,
            client_id: "my client:1",
            credentials,
            grant: GrantRequest::ClientCredentials,
            audience: Some("tasklist.camunda.io"),
            scope: Some("a b"),
            extra_params: &extra,
        };
        build_request(&bare(), &request, now())
            .expect("request")
            .request
    }

    fn body_text(request: &reqwest::Request) -> String {
        let bytes = request
            .body()
            .and_then(reqwest::Body::as_bytes)
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    fn form(request: &reqwest::Request) -> BTreeMap<String, String> {
        form_urlencoded::parse(body_text(request).as_bytes())
            .into_owned()
            .collect()
    }

    fn header<'a>(request: &'a reqwest::Request, name: &str) -> Option<&'a str> {
        request.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn basic_form_urlencodes_id_and_secret_first() {
        let request = wire(Credentials::Basic(Secret::new("p+a/s%s:w&o=rd x")));
        let expected = format!(
            "Basic {}",
            STANDARD.encode("my+client%3A1:p%2Ba%2Fs%25s%3Aw%26o%3Drd+x")
        );
        assert_eq!(header(&request, "authorization"), Some(expected.as_str()));
        assert!(request.headers()["authorization"].is_sensitive());
        assert_eq!(header(&request, "accept"), Some("application/json"));
        assert_eq!(
            header(&request, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(request.method(), reqwest::Method::POST);
        assert_eq!(
            body_text(&request),
            "grant_type=client_credentials&audience=tasklist.camunda.io&scope=a+b\
             &resource=https%3A%2F%2Fapi%2Fx"
        );
        assert!(
            !format!("{request:?}").contains("cDJ"),
            "Debug shows no credentials"
        );
    }

    #[test]
    fn post_puts_id_and_secret_in_the_form() {
        let request = wire(Credentials::Post(Secret::new("s&=+ %")));
        assert_eq!(header(&request, "authorization"), None);
        let form = form(&request);
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], "my client:1");
        assert_eq!(form["client_secret"], "s&=+ %");
        assert_eq!(form["audience"], "tasklist.camunda.io");
        assert_eq!(form["scope"], "a b");
        assert_eq!(form["resource"], "https://api/x");
        assert_eq!(form.len(), 6);
    }

    #[test]
    fn json_puts_everything_in_a_json_body() {
        let request = wire(Credentials::Json(Secret::new("s\"ecret")));
        assert_eq!(header(&request, "content-type"), Some("application/json"));
        assert_eq!(header(&request, "accept"), Some("application/json"));
        let body: Value = serde_json::from_str(&body_text(&request)).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "grant_type": "client_credentials",
                "client_id": "my client:1",
                "client_secret": "s\"ecret",
                "audience": "tasklist.camunda.io",
                "scope": "a b",
                "resource": "https://api/x",
            })
        );
    }

    #[test]
    fn tls_client_auth_sends_only_the_client_id() {
        let form = form(&wire(Credentials::TlsClientAuth));
        assert_eq!(form["client_id"], "my client:1");
        assert!(!form.contains_key("client_secret"));
        assert!(!form.contains_key("client_assertion"));
    }

    /// The assertion a request carries: header, claims, and whether `public_key` verifies it.
    fn assertion_of(
        request: &reqwest::Request,
        verify: impl Fn(&[u8], &[u8]) -> bool,
    ) -> (Value, Value) {
        assertion_of_with(request, verify, "tasklist.camunda.io")
    }

    fn assertion_of_with(
        request: &reqwest::Request,
        verify: impl Fn(&[u8], &[u8]) -> bool,
        audience: &str,
    ) -> (Value, Value) {
        let form = form(request);
        assert_eq!(form["client_assertion_type"], ASSERTION_TYPE);
        assert_eq!(form["client_id"], "my client:1");
        assert_eq!(form["audience"], audience);
        let assertion = &form["client_assertion"];
        let parts: Vec<&str> = assertion.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).expect("base64url");
        let signing_input = format!("{}.{}", parts[0], parts[1]);
        assert!(
            verify(signing_input.as_bytes(), &decode(parts[2])),
            "the signature verifies"
        );
        let header = serde_json::from_slice(&decode(parts[0])).expect("header");
        let claims = serde_json::from_slice(&decode(parts[1])).expect("claims");
        (header, claims)
    }

    fn jwt_credentials(key_pem: &str, key_id: Option<&str>) -> Credentials {
        Credentials::PrivateKeyJwt {
            key_pem: Secret::new(key_pem),
            key_id: key_id.map(str::to_owned),
            assertion_audience: "https://idp.example.com/token".into(),
        }
    }

    fn rsa_public_key() -> Vec<u8> {
        let der = PrivateKeyDer::from_pem_slice(RSA_PKCS8.as_bytes()).expect("pem");
        RsaKeyPair::from_pkcs8(der.secret_der())
            .expect("rsa")
            .public_key()
            .as_ref()
            .to_vec()
    }

    fn ec_public_key(pkcs8: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .expect("ec")
            .public_key()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn private_key_jwt_with_rsa_signs_rs256() {
        let public_key = rsa_public_key();
        let verify = |message: &[u8], signature: &[u8]| {
            signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &public_key)
                .verify(message, signature)
                .is_ok()
        };
        for pem in [RSA_PKCS8, RSA_PKCS1] {
            let request = wire(jwt_credentials(pem, Some("rsa-1")));
            let (header, claims) = assertion_of(&request, verify);
            assert_eq!(
                header,
                serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"})
            );
            assert_eq!(claims["iss"], "my client:1");
            assert_eq!(claims["sub"], "my client:1");
            assert_eq!(claims["aud"], "https://idp.example.com/token");
            assert_eq!(claims["iat"], 1_700_000_000);
            assert_eq!(claims["exp"], 1_700_000_060);
            assert_eq!(claims.as_object().map(Map::len), Some(6));
        }
    }

    #[test]
    fn private_key_jwt_with_ec_signs_es256_and_a_fresh_jti() {
        let rng = SystemRandom::new();
        let generated =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("generate");
        let generated_pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(generated.as_ref())
        );
        let sec1_public = {
            let der = PrivateKeyDer::from_pem_slice(EC_SEC1.as_bytes()).expect("pem");
            ec_public_key(&sec1_to_pkcs8(der.secret_der()))
        };
        for (pem, public_key) in [
            (generated_pem.as_str(), ec_public_key(generated.as_ref())),
            (EC_SEC1, sec1_public),
        ] {
            let verify = |message: &[u8], signature: &[u8]| {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public_key)
                    .verify(message, signature)
                    .is_ok()
            };
            let (header, first) = assertion_of(&wire(jwt_credentials(pem, None)), verify);
            assert_eq!(header, serde_json::json!({"alg": "ES256", "typ": "JWT"}));
            let (_, second) = assertion_of(&wire(jwt_credentials(pem, None)), verify);
            assert_ne!(first["jti"], second["jti"]);
            assert!(first["jti"].as_str().is_some_and(|jti| jti.len() >= 16));
        }
    }

    fn wire_with(credentials: Credentials, grant: GrantRequest) -> Built {
        let url = Url::parse("https://idp.example.com/token").expect("url");
        let extra = BTreeMap::from([("resource".to_owned(), "https://api/x".to_owned())]);
        let request = TokenRequest {
            token_url: &url,
            client_id: "my client:1",
            credentials,
            grant,
            audience: Some("aud"),
            scope: None,
            extra_params: &extra,
        };
        build_request(&bare(), &request, now()).expect("request")
    }

    #[test]
    fn client_secret_jwt_signs_hs256_with_the_secret_and_a_fresh_jti() {
        let credentials = || Credentials::SecretJwt {
            secret: Secret::new("shared secret"),
            assertion_audience: "https://idp.example.com/token".into(),
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"shared secret");
        let verify =
            |message: &[u8], signature: &[u8]| ring::hmac::verify(&key, message, signature).is_ok();
        let first = wire_with(credentials(), GrantRequest::ClientCredentials);
        let (header, claims) = assertion_of_with(&first.request, verify, "aud");
        assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        assert_eq!(claims["iss"], "my client:1");
        assert_eq!(claims["sub"], "my client:1");
        assert_eq!(claims["aud"], "https://idp.example.com/token");
        assert_eq!(claims["exp"], 1_700_000_060);
        assert!(!form(&first.request).contains_key("client_secret"));
        let second = wire_with(credentials(), GrantRequest::ClientCredentials);
        let (_, again) = assertion_of_with(&second.request, verify, "aud");
        assert_ne!(claims["jti"], again["jti"]);
        // The assertion and the secret itself are what an error must never quote.
        let assertion = form(&first.request)["client_assertion"].clone();
        assert!(first.echoable.contains(&assertion));
        assert!(first.echoable.contains(&"shared secret".to_owned()));
    }

    #[test]
    fn token_exchange_and_a_public_client_send_exactly_their_parameters() {
        let built = wire_with(
            Credentials::Public,
            GrantRequest::TokenExchange {
                subject_token: Secret::new("subject.jwt.x"),
                subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
                actor: Some((Secret::new("actor-opaque"), "urn:x:actor".into())),
                requested_token_type: Some("urn:ietf:params:oauth:token-type:access_token".into()),
            },
        );
        assert_eq!(header(&built.request, "authorization"), None);
        assert_eq!(
            body_text(&built.request),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
             &subject_token=subject.jwt.x\
             &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt\
             &actor_token=actor-opaque&actor_token_type=urn%3Ax%3Aactor\
             &requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &client_id=my+client%3A1&audience=aud&resource=https%3A%2F%2Fapi%2Fx"
        );
        for sent in ["subject.jwt.x", "actor-opaque"] {
            assert!(built.echoable.contains(&sent.to_owned()), "{sent}");
        }
    }

    #[test]
    fn a_client_assertion_and_a_jwt_bearer_grant_are_sent_as_read() {
        let built = wire_with(
            Credentials::ClientAssertion {
                assertion: Secret::new("client.assertion.sig"),
                assertion_type: "urn:example:custom".into(),
            },
            GrantRequest::JwtBearer(BearerAssertion::Read(Secret::new("grant.assertion.sig"))),
        );
        let form = form(&built.request);
        assert_eq!(
            form,
            BTreeMap::from([
                (
                    "grant_type".to_owned(),
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".to_owned()
                ),
                ("assertion".to_owned(), "grant.assertion.sig".to_owned()),
                ("client_id".to_owned(), "my client:1".to_owned()),
                (
                    "client_assertion_type".to_owned(),
                    "urn:example:custom".to_owned()
                ),
                (
                    "client_assertion".to_owned(),
                    "client.assertion.sig".to_owned()
                ),
                ("audience".to_owned(), "aud".to_owned()),
                ("resource".to_owned(), "https://api/x".to_owned()),
            ])
        );
    }

    /// Google's token endpoint reads the scopes of a service-account grant from the assertion.
    #[test]
    fn a_signed_jwt_bearer_grant_carries_its_scope_as_a_claim() {
        let url = Url::parse("https://idp.example.com/token").expect("url");
        let extra = BTreeMap::new();
        let grant = |scope| TokenRequest {
            token_url: &url,
            client_id: "sa@project.iam.gserviceaccount.com",
            credentials: Credentials::Public,
            grant: GrantRequest::JwtBearer(BearerAssertion::Sign {
                key_pem: Secret::new(EC_SEC1),
                key_id: Some("k1".into()),
                issuer: "sa@project.iam.gserviceaccount.com".into(),
                subject: "sa@project.iam.gserviceaccount.com".into(),
                audience: "https://oauth2.googleapis.com/token".into(),
            }),
            audience: None,
            scope,
            extra_params: &extra,
        };
        let claims_of = |request: &TokenRequest<'_>| -> Value {
            let built = build_request(&bare(), request, now()).expect("request");
            let assertion = form(&built.request)["assertion"].clone();
            let payload = assertion.split('.').nth(1).expect("a JWS").to_owned();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
                .expect("claims")
        };
        let scoped = claims_of(&grant(Some(
            "https://www.googleapis.com/auth/cloud-platform",
        )));
        assert_eq!(
            scoped["scope"],
            "https://www.googleapis.com/auth/cloud-platform"
        );
        assert_eq!(scoped["aud"], "https://oauth2.googleapis.com/token");
        assert!(claims_of(&grant(None)).get("scope").is_none());
    }

    #[test]
    fn unusable_keys_are_permanent_errors_that_quote_nothing() {
        let url = Url::parse("https://idp.example.com/token").expect("url");
        let extra = BTreeMap::new();
        let garbled = EC_SEC1.replace("MHcCAQEEII6TjBhQ", "MHcCAQEE!!6TjBhQ");
        for (pem, expected) in [
            (EC_P384_PKCS8, "P-256"),
            ("not a key", "no PEM private key found"),
            (EC_CERT, "no PEM private key found"),
            (garbled.as_str(), "not valid PEM"),
        ] {
            let request = TokenRequest {
                token_url: &url,
                client_id: "c",
                credentials: jwt_credentials(pem, None),
                grant: GrantRequest::ClientCredentials,
                audience: None,
                scope: None,
                extra_params: &extra,
            };
            let Err(error) = build_request(&bare(), &request, now()) else {
                panic!("an unusable key was accepted");
            };
            assert!(error.is_permanent());
            assert!(error.message().starts_with("private_key_jwt: "), "{error}");
            assert!(error.message().contains(expected), "{error}");
            assert!(!error.message().contains("MHc"), "{error}");
        }
    }

    // ---- against the in-process endpoint ----

    /// The `token_endpoint_auth_method` name the endpoint records for `credentials`.
    fn method_name(credentials: &Credentials) -> &'static str {
        match credentials {
            Credentials::Basic(_) => "client_secret_basic",
            Credentials::Post(_) => "client_secret_post",
            Credentials::Json(_) => "client_secret_json",
            Credentials::PrivateKeyJwt { .. } => "private_key_jwt",
            Credentials::TlsClientAuth => "tls_client_auth",
            Credentials::SecretJwt { .. } => "client_secret_jwt",
            Credentials::ClientAssertion { .. } => "client_assertion",
            Credentials::Public => "none",
        }
    }

    async fn request(
        http: &reqwest::Client,
        url: &str,
        client_id: &str,
        credentials: Credentials,
    ) -> Result<Token, FetchError> {
        let url = Url::parse(url).expect("url");
        let extra = BTreeMap::new();
        let request = TokenRequest {
            token_url: &url,
            client_id,
            credentials,
            grant: GrantRequest::ClientCredentials,
            audience: Some("api"),
            scope: Some("read write"),
            extra_params: &extra,
        };
        request_token(http, &request, SystemTime::now(), DEFAULT).await
    }

    #[tokio::test]
    async fn every_secret_method_gets_a_token() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        let secret = "p+a/s%s:w&o=rd x";
        idp.add_client("my client:1", secret, Duration::from_secs(120));
        let http = http();
        for credentials in [
            Credentials::Basic(Secret::new(secret)),
            Credentials::Post(Secret::new(secret)),
            Credentials::Json(Secret::new(secret)),
        ] {
            let method = method_name(&credentials);
            let token = request(&http, &idp.token_url(), "my client:1", credentials)
                .await
                .expect(method);
            assert_eq!(token.token_type, "Bearer");
            assert_eq!(token.scope.as_deref(), Some("read write"));
            let lifetime = token
                .expires_at
                .duration_since(token.issued_at)
                .expect("life");
            assert_eq!(lifetime, Duration::from_secs(120));
            let recorded = idp.requests().pop().expect("recorded");
            assert_eq!(recorded.auth_method, Some(method));
            assert_eq!(recorded.client_id.as_deref(), Some("my client:1"));
            assert_eq!(recorded.header("user-agent"), Some(USER_AGENT));
            assert_eq!(recorded.params()["audience"], "api");
        }
    }

    #[tokio::test]
    async fn private_key_jwt_gets_a_token() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.add_key_client("bot", KeyAlgorithm::Rs256, &rsa_public_key(), DEFAULT);
        let credentials = Credentials::PrivateKeyJwt {
            key_pem: Secret::new(RSA_PKCS8),
            key_id: None,
            assertion_audience: idp.token_url(),
        };
        request(&http(), &idp.token_url(), "bot", credentials)
            .await
            .expect("token");
        assert_eq!(idp.requests()[0].auth_method, Some("private_key_jwt"));
    }

    #[tokio::test]
    async fn a_wrong_secret_is_permanent_and_not_echoed() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.add_client("bot", "right", DEFAULT);
        let error = request(
            &http(),
            &idp.token_url(),
            "bot",
            Credentials::Basic(Secret::new("wrong-secret")),
        )
        .await
        .expect_err("refused");
        assert!(error.is_permanent());
        assert_eq!(
            error.message(),
            format!(
                "token endpoint {} answered 401 Unauthorized: invalid_client: client authentication failed",
                idp.token_url()
            )
        );
        idp.set_fault(Fault::Status {
            status: 500,
            body: "oops: client_secret=wrong-secret&x=wrong%2Dsecret wrong-secret".into(),
            content_type: "text/plain".into(),
            retry_after: None,
        });
        let error = request(
            &http(),
            &idp.token_url(),
            "bot",
            Credentials::Post(Secret::new("wrong-secret")),
        )
        .await
        .expect_err("500");
        assert!(!error.message().contains("wrong-secret"), "{error}");
        assert!(error.message().contains("[redacted]"), "{error}");
    }

    /// An HTML error page (a proxy's, a framework's) that quotes the secret HTML-escaped, in
    /// the spellings Python's `html.escape`, Go's `html/template` and others use.
    #[tokio::test]
    async fn a_secret_echoed_html_escaped_is_redacted() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        idp.add_client("bot", "right", DEFAULT);
        let secret = r#"s3cr&t<x>"y'z"#;
        for echo in [
            "s3cr&amp;t&lt;x&gt;&quot;y&#39;z",
            "s3cr&amp;t&lt;x&gt;&#34;y&#39;z",
            "s3cr&amp;t&lt;x&gt;&quot;y&#x27;z",
            "s3cr&amp;t&lt;x&gt;\"y'z",
        ] {
            idp.set_fault(Fault::Status {
                status: 500,
                body: format!("<html><body><p>bad client_secret {echo}</p></body></html>"),
                content_type: "text/html".into(),
                retry_after: None,
            });
            let error = request(
                &http(),
                &idp.token_url(),
                "bot",
                Credentials::Post(Secret::new(secret)),
            )
            .await
            .expect_err("500");
            assert!(!error.message().contains("s3cr"), "{echo}: {error}");
            assert!(error.message().contains("[redacted]"), "{echo}: {error}");
        }
    }

    /// An echo the message would quote cut short (an excerpt is 120 characters) is no longer
    /// the whole credential, so it must be redacted before the cut: in a 2xx body without a
    /// token, and in an error body whose JSON escapes the credential (`\/`).
    #[tokio::test]
    async fn an_echo_cut_short_in_a_message_is_still_redacted() {
        let idp = Idp::start(IdpSettings {
            accept_unknown_clients: true,
            ..IdpSettings::default()
        })
        .await
        .expect("idp");
        let url = Url::parse(&idp.token_url()).expect("url");
        let extra = BTreeMap::new();
        let padding = "p".repeat(100);
        let subject = format!("subj3ct-t0ken-{}", "q".repeat(60));
        idp.set_fault(Fault::Body(format!(
            r#"{{"error":"invalid_grant","error_description":"{padding} {subject}"}}"#
        )));
        let exchange = TokenRequest {
            token_url: &url,
            client_id: "c",
            credentials: Credentials::Public,
            grant: GrantRequest::TokenExchange {
                subject_token: Secret::new(subject.as_str()),
                subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
                actor: None,
                requested_token_type: None,
            },
            audience: None,
            scope: None,
            extra_params: &extra,
        };
        let error = request_token(&http(), &exchange, SystemTime::now(), DEFAULT)
            .await
            .expect_err("no token");
        assert!(error.message().contains("[redacted]"), "{error}");
        assert!(!error.message().contains("subj3ct"), "{error}");

        let secret = "s3cr/et-value-0123456789";
        idp.set_fault(Fault::Status {
            status: 400,
            body: format!(
                r#"{{"error":"invalid_client","error_description":"{padding} {}"}}"#,
                secret.replace('/', "\\/")
            ),
            content_type: "application/json".into(),
            retry_after: None,
        });
        let error = request(
            &http(),
            &idp.token_url(),
            "c",
            Credentials::Post(Secret::new(secret)),
        )
        .await
        .expect_err("refused");
        assert!(error.message().contains("[redacted]"), "{error}");
        assert!(!error.message().contains("s3cr"), "{error}");
    }

    #[tokio::test]
    async fn faults_become_transient_errors() {
        let idp = Idp::start(IdpSettings {
            accept_unknown_clients: true,
            ..IdpSettings::default()
        })
        .await
        .expect("idp");
        let http = http_client(
            Duration::from_millis(500),
            &TlsSettings::default(),
            Roots::System,
        )
        .expect("http");
        let cases = [
            (
                Fault::Status {
                    status: 503,
                    body: "<h1>down</h1>".into(),
                    content_type: "text/html".into(),
                    retry_after: Some("3".into()),
                },
                "answered 503 Service Unavailable: <h1>down</h1>",
            ),
            (Fault::CloseConnection, ": "),
            (
                Fault::ResetMidBody,
                "answered 200 OK but reading the body failed",
            ),
            (
                Fault::TruncatedJson,
                "answered 200 OK but invalid JSON: EOF while parsing",
            ),
            (
                Fault::Oversized,
                "answered 200 OK but the body is larger than 64 KiB",
            ),
            (
                Fault::Body("{}".into()),
                "answered 200 OK but no access_token",
            ),
            (Fault::Hang, ": timed out"),
        ];
        for (fault, expected) in cases {
            idp.set_fault(fault.clone());
            let error = request(
                &http,
                &idp.token_url(),
                "c",
                Credentials::Basic(Secret::new("s")),
            )
            .await
            .expect_err("a fault");
            assert!(!error.is_permanent(), "{fault:?}: {error}");
            assert!(error.message().contains(expected), "{fault:?}: {error}");
            assert!(
                error
                    .message()
                    .starts_with(&format!("token endpoint {}", idp.token_url())),
                "{error}"
            );
            if matches!(fault, Fault::Status { .. }) {
                assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
            }
        }
        idp.set_fault(Fault::None);
        request(
            &http,
            &idp.token_url(),
            "c",
            Credentials::Basic(Secret::new("s")),
        )
        .await
        .expect("healed");
    }

    #[tokio::test]
    async fn a_hostile_token_from_the_server_is_permanent() {
        let idp = Idp::start(IdpSettings {
            accept_unknown_clients: true,
            ..IdpSettings::default()
        })
        .await
        .expect("idp");
        idp.set_fault(Fault::Body(r#"{"access_token":"x\"; rm -rf ~"}"#.into()));
        let error = request(
            &http(),
            &idp.token_url(),
            "c",
            Credentials::Basic(Secret::new("s")),
        )
        .await
        .expect_err("hostile");
        assert!(error.is_permanent());
        assert!(!error.message().contains("rm -rf"));
    }

    #[tokio::test]
    async fn jwt_tokens_expire_at_their_exp() {
        let idp = Idp::start(IdpSettings {
            accept_unknown_clients: true,
            jwt_tokens: true,
            default_lifetime: Duration::from_secs(90),
            ..IdpSettings::default()
        })
        .await
        .expect("idp");
        let token = request(
            &http(),
            &idp.token_url(),
            "c",
            Credentials::Post(Secret::new("s")),
        )
        .await
        .expect("token");
        assert!(jwt_expiry(token.access_token.expose()).is_some());
        let lifetime = token
            .expires_at
            .duration_since(token.issued_at)
            .expect("life");
        assert!(lifetime <= Duration::from_secs(90) && lifetime >= Duration::from_secs(85));
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_flagged() {
        let idp = Idp::start(IdpSettings::default()).await.expect("idp");
        let missing = format!("{}/nowhere?secret=1", idp.issuer());
        let error = request(&http(), &missing, "c", Credentials::Basic(Secret::new("s")))
            .await
            .expect_err("404");
        assert!(
            error.is_permanent() && error.endpoint_unreachable(),
            "{error}"
        );
        assert!(!error.message().contains("secret=1"), "{error}");

        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr")
        };
        let url = format!("http://{closed}/token");
        let error = request(&http(), &url, "c", Credentials::Basic(Secret::new("s")))
            .await
            .expect_err("refused");
        assert_eq!(
            error,
            FetchError::Transient {
                message: format!("token endpoint {url}: connection refused"),
                retry_after: None,
                endpoint_unreachable: true,
            }
        );
    }
}
