//! What a client trades for a token, as configured: `grant_type` and the keys of its grant
//! (the RFC 8693 subject and actor token files and types, the RFC 7523 assertion file or
//! signing key and claims), into a [`Grant`]. It reads no token file: those are read at use.

use toml::de::DeTable;

use super::{Checker, Span, key_span};
use crate::config::{Grant, JWT_TOKEN_TYPE, JwtAssertion, TypedTokenFile};
use crate::files;

const TOKEN_EXCHANGE_KEYS: &[&str] = &[
    "subject_token_file",
    "subject_token_type",
    "actor_token_file",
    "actor_token_type",
    "requested_token_type",
];

impl Checker<'_> {
    pub(super) fn grant(
        &mut self,
        table: &DeTable<'_>,
        span: &Span,
        prefix: &str,
    ) -> Option<Grant> {
        let grant_type = self.string(table, prefix, "grant_type");
        let grant_key = format!("{prefix}.grant_type");
        let grant_span = grant_type.as_ref().map_or(span.clone(), |(_, s)| s.clone());
        let name = match &grant_type {
            None => "client_credentials",
            Some((text, span)) => match text.as_str() {
                "client_credentials" => "client_credentials",
                "token_exchange" => "token_exchange",
                "jwt_bearer" => "jwt_bearer",
                _ => {
                    self.error(
                        span,
                        &grant_key,
                        format!(
                            "expected one of client_credentials, token_exchange, jwt_bearer; \
                             found {text:?}"
                        ),
                    );
                    return None;
                }
            },
        };
        if name != "token_exchange" {
            for key in TOKEN_EXCHANGE_KEYS {
                self.grant_key_not_used(table, prefix, key, "token_exchange");
            }
        }
        let signs = name == "jwt_bearer" && !table.contains_key("assertion_file");
        if name != "jwt_bearer" {
            self.grant_key_not_used(table, prefix, "assertion_file", "jwt_bearer");
        }
        if !signs {
            for key in ["assertion_issuer", "assertion_subject"] {
                if let Some(span) = key_span(table, key) {
                    self.error(
                        &span,
                        &format!("{prefix}.{key}"),
                        "only used when bearerd signs a jwt_bearer assertion (grant_type = \
                         \"jwt_bearer\" with private_key_file, no assertion_file)",
                    );
                }
            }
        }
        match name {
            "token_exchange" => {
                let subject = self.token_file(table, prefix, "subject_token_file");
                let subject_type = self.token_type(table, prefix, "subject_token_type");
                let actor = self.token_file(table, prefix, "actor_token_file");
                let actor_type = self.token_type(table, prefix, "actor_token_type");
                let requested_token_type =
                    self.non_empty_string(table, prefix, "requested_token_type");
                if !table.contains_key("subject_token_file") {
                    self.error(
                        &grant_span,
                        &grant_key,
                        "token_exchange needs subject_token_file",
                    );
                }
                if !table.contains_key("actor_token_file")
                    && let Some(span) = key_span(table, "actor_token_type")
                {
                    self.error(
                        &span,
                        &format!("{prefix}.actor_token_type"),
                        "only used with actor_token_file",
                    );
                }
                Some(Grant::TokenExchange {
                    subject: TypedTokenFile {
                        path: subject?,
                        token_type: subject_type,
                    },
                    actor: actor.map(|path| TypedTokenFile {
                        path,
                        token_type: actor_type,
                    }),
                    requested_token_type,
                })
            }
            "jwt_bearer" if !signs => self
                .token_file(table, prefix, "assertion_file")
                .map(|path| Grant::JwtBearer(JwtAssertion::File(path))),
            "jwt_bearer" => {
                if !table.contains_key("private_key_file") {
                    self.error(
                        &grant_span,
                        &grant_key,
                        "jwt_bearer needs assertion_file, or private_key_file to sign the \
                         assertion",
                    );
                    return None;
                }
                let key_file =
                    self.existing_file(table, prefix, "private_key_file", files::Kind::PrivateKey);
                Some(Grant::JwtBearer(JwtAssertion::Signed {
                    key_id: self.non_empty_string(table, prefix, "key_id"),
                    issuer: self.non_empty_string(table, prefix, "assertion_issuer"),
                    subject: self.non_empty_string(table, prefix, "assertion_subject"),
                    audience: self.non_empty_string(table, prefix, "assertion_audience"),
                    key_file: key_file?,
                }))
            }
            _ => Some(Grant::ClientCredentials),
        }
    }

    fn grant_key_not_used(&mut self, table: &DeTable<'_>, prefix: &str, key: &str, grant: &str) {
        if let Some(span) = key_span(table, key) {
            self.error(
                &span,
                &format!("{prefix}.{key}"),
                format!("only used with grant_type = \"{grant}\""),
            );
        }
    }

    /// An RFC 8693 token type URI; a JWT's unless configured.
    fn token_type(&mut self, table: &DeTable<'_>, prefix: &str, key: &str) -> String {
        self.non_empty_string(table, prefix, key)
            .unwrap_or_else(|| JWT_TOKEN_TYPE.to_owned())
    }
}
