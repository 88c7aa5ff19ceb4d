//! How a client proves who it is: the [`Credentials`] of one request (the configured method, or
//! the first the discovery document lists that bearerd supports), with the credential files
//! read at use so that a rotated secret, key or client assertion needs no reload; the
//! credential's bytes that key a state file's fingerprint; the Basic header. It sends nothing
//! and signs nothing (`jwt` signs the assertions).

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderValue;
use url::Url;
use url::form_urlencoded;

use super::error::FetchError;
use super::token_file;
use crate::config::{Auth, Grant, JwtAssertion, RequestSpec, SecretMethod};
use crate::files;
use crate::secret::Secret;

/// How the client authenticates, with the credential itself.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Credentials {
    /// `client_secret_basic`: HTTP Basic with form-urlencoded id and secret (RFC 6749 §2.3.1).
    Basic(Secret),
    /// `client_secret_post`: id and secret in the form body.
    Post(Secret),
    /// `client_secret_json`: every parameter in a JSON body (Camunda, Auth0).
    Json(Secret),
    /// `private_key_jwt` (RFC 7523): a JWT signed with the client's key.
    PrivateKeyJwt {
        /// PKCS#8, PKCS#1 RSA or SEC1 EC (P-256) PEM.
        key_pem: Secret,
        key_id: Option<String>,
        /// The assertion's `aud`: usually the token endpoint URL.
        assertion_audience: String,
    },
    /// `tls_client_auth` (RFC 8705): the HTTP client's certificate is the credential.
    TlsClientAuth,
    /// `client_secret_jwt` (OIDC Core §9): an HS256 JWT signed with the client secret.
    SecretJwt {
        secret: Secret,
        assertion_audience: String,
    },
    /// `client_assertion`: a JWT made elsewhere, as read from its file for this request.
    ClientAssertion {
        assertion: Secret,
        assertion_type: String,
    },
    /// `none`: a public client.
    Public,
}

impl Credentials {
    /// The credentials for one request at `now`; a secret file is re-read so rotation needs
    /// no reload, and a client assertion file so that the kubelet's rotation is followed.
    pub(super) fn current(
        spec: &RequestSpec,
        discovered_methods: Option<&[String]>,
        token_url: &Url,
        now: SystemTime,
    ) -> Result<Self, FetchError> {
        match &spec.auth {
            Auth::Secret { secret, method } => {
                let secret = secret.current().map_err(FetchError::transient)?;
                let method = match method {
                    Some(method) => *method,
                    None => choose_secret_method(discovered_methods.unwrap_or_default())?,
                };
                Ok(match method {
                    SecretMethod::Basic => Credentials::Basic(secret),
                    SecretMethod::Post => Credentials::Post(secret),
                    SecretMethod::Json => Credentials::Json(secret),
                })
            }
            Auth::PrivateKeyJwt {
                key_file,
                key_id,
                assertion_audience,
            } => {
                let key_pem = files::read_text(key_file, files::Kind::PrivateKey)
                    .map_err(|error| FetchError::transient(error.to_string()))?;
                Ok(Credentials::PrivateKeyJwt {
                    key_pem: Secret::new(key_pem),
                    key_id: key_id.clone(),
                    assertion_audience: assertion_audience
                        .clone()
                        .unwrap_or_else(|| token_url.to_string()),
                })
            }
            Auth::TlsClientAuth => Ok(Credentials::TlsClientAuth),
            Auth::ClientSecretJwt {
                secret,
                assertion_audience,
            } => Ok(Credentials::SecretJwt {
                secret: secret.current().map_err(FetchError::transient)?,
                assertion_audience: assertion_audience
                    .clone()
                    .unwrap_or_else(|| token_url.to_string()),
            }),
            Auth::ClientAssertion {
                file,
                assertion_type,
            } => Ok(Credentials::ClientAssertion {
                assertion: token_file::read(file, files::Kind::ClientAssertion, now)?,
                assertion_type: assertion_type.clone(),
            }),
            Auth::Public => Ok(Credentials::Public),
        }
    }
}

/// What the client proves itself with, read now, as the key of its state file's fingerprint:
/// its secret or private key, a `jwt_bearer` grant's signing key, and its TLS client key when
/// it has one (`None` if it has none). Each part is labelled and length-prefixed, so no two
/// different credentials give the same bytes. The files are read as the request reads them,
/// so a credential the request can use is one the fingerprint can use. Token files
/// (assertions, subject and actor tokens) are left out on purpose: the kubelet rotates them
/// hourly, and a rotation must not throw away a still-valid saved token.
pub(crate) fn fingerprint_key(spec: &RequestSpec) -> Result<Option<Vec<u8>>, String> {
    let mut parts: Vec<(&str, Vec<u8>)> = Vec::new();
    match &spec.auth {
        Auth::Secret { secret, .. } | Auth::ClientSecretJwt { secret, .. } => {
            parts.push(("secret", secret.current()?.expose().as_bytes().to_vec()));
        }
        Auth::PrivateKeyJwt { key_file, .. } => {
            let key = files::read(key_file, files::Kind::PrivateKey)
                .map_err(|error| error.to_string())?;
            parts.push(("private_key", key));
        }
        Auth::TlsClientAuth | Auth::ClientAssertion { .. } | Auth::Public => {}
    }
    if let Grant::JwtBearer(JwtAssertion::Signed { key_file, .. }) = &spec.grant {
        let key =
            files::read(key_file, files::Kind::PrivateKey).map_err(|error| error.to_string())?;
        parts.push(("grant_private_key", key));
    }
    if let Some(identity) = &spec.tls.identity {
        let key = files::read(&identity.key_file, files::Kind::TlsKey)
            .map_err(|error| error.to_string())?;
        parts.push(("tls_client_key", key));
    }
    if parts.is_empty() {
        // A client whose only credentials are token files (client_assertion, none): nothing
        // secret to key with, so its state file is trusted on its owner and mode alone.
        parts.push(("no_long_lived_credential", Vec::new()));
    }
    let mut key = Vec::new();
    for (label, bytes) in parts {
        for field in [label.as_bytes(), &bytes] {
            key.extend_from_slice(&(field.len() as u64).to_be_bytes());
            key.extend_from_slice(field);
        }
    }
    Ok(Some(key))
}

/// The first secret-based method the discovery document lists that we support.
fn choose_secret_method(listed: &[String]) -> Result<SecretMethod, FetchError> {
    let listed_or_default: Vec<&str> = if listed.is_empty() {
        vec!["client_secret_basic"]
    } else {
        listed.iter().map(String::as_str).collect()
    };
    listed_or_default
        .iter()
        .find_map(|method| match *method {
            "client_secret_basic" => Some(SecretMethod::Basic),
            "client_secret_post" => Some(SecretMethod::Post),
            _ => None,
        })
        .ok_or_else(|| {
            FetchError::permanent(format!(
                "the server supports none of client_secret_basic, client_secret_post \
                 (it lists {}); set auth_method",
                listed_or_default.join(", ")
            ))
        })
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, form-urlencoded first (RFC 6749 §2.3.1).
pub(super) fn basic_authorization(
    client_id: &str,
    secret: &Secret,
) -> Result<HeaderValue, FetchError> {
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let secret: String = form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect();
    let credentials = STANDARD.encode(format!("{id}:{secret}"));
    let mut value = HeaderValue::from_str(&format!("Basic {credentials}"))
        .map_err(|_| FetchError::permanent("cannot encode the Basic authorization header"))?;
    value.set_sensitive(true);
    Ok(value)
}
