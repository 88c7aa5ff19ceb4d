//! What a client trades for a token in one request: the [`GrantRequest`] read from its
//! `Grant` at use (client credentials; an RFC 8693 subject and actor token; an RFC 7523
//! assertion, from its file or to be signed with the grant's key), and the parameters each
//! puts in the body. It sends nothing; `request` builds and sends the request.

use std::time::SystemTime;

use url::Url;

use super::error::FetchError;
use super::token_file;
use crate::config::{Grant, JwtAssertion};
use crate::files;
use crate::secret::Secret;

pub(super) const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(super) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A grant as it stands for one request: every token file read and checked at `now`.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum GrantRequest {
    ClientCredentials,
    TokenExchange {
        subject_token: Secret,
        subject_token_type: String,
        /// The actor token and its type.
        actor: Option<(Secret, String)>,
        requested_token_type: Option<String>,
    },
    JwtBearer(BearerAssertion),
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum BearerAssertion {
    /// As read from `assertion_file`.
    Read(Secret),
    /// To be signed when the request is built.
    Sign {
        key_pem: Secret,
        key_id: Option<String>,
        issuer: String,
        subject: String,
        audience: String,
    },
}

impl GrantRequest {
    /// The grant of `grant` for one request to `token_url` at `now`: its token files are
    /// re-read (never cached) and refused when expired or not yet valid.
    pub(super) fn current(
        grant: &Grant,
        client_id: &str,
        token_url: &Url,
        now: SystemTime,
    ) -> Result<Self, FetchError> {
        Ok(match grant {
            Grant::ClientCredentials => Self::ClientCredentials,
            Grant::TokenExchange {
                subject,
                actor,
                requested_token_type,
            } => Self::TokenExchange {
                subject_token: token_file::read(&subject.path, files::Kind::SubjectToken, now)?,
                subject_token_type: subject.token_type.clone(),
                actor: match actor {
                    Some(actor) => Some((
                        token_file::read(&actor.path, files::Kind::ActorToken, now)?,
                        actor.token_type.clone(),
                    )),
                    None => None,
                },
                requested_token_type: requested_token_type.clone(),
            },
            Grant::JwtBearer(JwtAssertion::File(path)) => Self::JwtBearer(BearerAssertion::Read(
                token_file::read(path, files::Kind::Assertion, now)?,
            )),
            Grant::JwtBearer(JwtAssertion::Signed {
                key_file,
                key_id,
                issuer,
                subject,
                audience,
            }) => {
                let key_pem = files::read_text(key_file, files::Kind::PrivateKey)
                    .map_err(|error| FetchError::transient(error.to_string()))?;
                Self::JwtBearer(BearerAssertion::Sign {
                    key_pem: Secret::new(key_pem),
                    key_id: key_id.clone(),
                    issuer: issuer.clone().unwrap_or_else(|| client_id.to_owned()),
                    subject: subject.clone().unwrap_or_else(|| client_id.to_owned()),
                    audience: audience.clone().unwrap_or_else(|| token_url.to_string()),
                })
            }
        })
    }

    /// The `grant_type` parameter.
    pub(super) fn grant_type(&self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::TokenExchange { .. } => TOKEN_EXCHANGE,
            Self::JwtBearer(_) => JWT_BEARER,
        }
    }
}
