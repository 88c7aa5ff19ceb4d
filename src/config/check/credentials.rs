//! How a client proves who it is, as configured: `auth_method`, its secret (inline or a file),
//! its private key, its client assertion file, and its TLS client certificate, into an
//! [`Auth`] and a [`TlsIdentity`]; which methods a grant cannot use.
//! It reads a credential file only to check it; the request reads it again at use.

use toml::de::DeTable;

use std::path::PathBuf;

use super::{Checker, Span, key_span};
use crate::config::client::read_secret_file;
use crate::config::{
    Auth, Grant, JWT_BEARER_ASSERTION_TYPE, JwtAssertion, SecretMethod, SecretSource, TlsIdentity,
};
use crate::files;
use crate::secret::Secret;

/// `auth_method`, as configured or inferred. `Secret(None)`: a secret whose method the
/// discovery document decides.
#[derive(Clone, Copy, PartialEq)]
enum AuthMethod {
    Secret(Option<SecretMethod>),
    SecretJwt,
    PrivateKeyJwt,
    TlsClientAuth,
    ClientAssertion,
    Public,
}

impl AuthMethod {
    fn name(self) -> &'static str {
        match self {
            Self::Secret(Some(SecretMethod::Basic)) | Self::Secret(None) => "client_secret_basic",
            Self::Secret(Some(SecretMethod::Post)) => "client_secret_post",
            Self::Secret(Some(SecretMethod::Json)) => "client_secret_json",
            Self::SecretJwt => "client_secret_jwt",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::TlsClientAuth => "tls_client_auth",
            Self::ClientAssertion => "client_assertion",
            Self::Public => "none",
        }
    }

    fn uses_secret(self) -> bool {
        matches!(self, Self::Secret(_) | Self::SecretJwt)
    }

    fn signs(self) -> bool {
        matches!(self, Self::PrivateKeyJwt | Self::SecretJwt)
    }
}

const AUTH_METHODS: &str = "client_secret_basic, client_secret_post, client_secret_json, \
                            client_secret_jwt, private_key_jwt, tls_client_auth, \
                            client_assertion, none";

impl Checker<'_> {
    /// `auth_method` and its credential. `grant` is the client's grant (checked first): with
    /// a `jwt_bearer` assertion bearerd signs, `private_key_file` is the grant's key, and a
    /// `jwt_bearer` client with no credential of its own is a public client.
    pub(super) fn auth(
        &mut self,
        table: &DeTable<'_>,
        span: &Span,
        prefix: &str,
        with_issuer: bool,
        grant: Option<&Grant>,
    ) -> Option<Auth> {
        let key_signs_grant = matches!(grant, Some(Grant::JwtBearer(JwtAssertion::Signed { .. })));
        let grant_name = grant.map(Grant::name);
        let method = self.string(table, prefix, "auth_method");
        let method_key = format!("{prefix}.auth_method");
        let method_span = method.as_ref().map_or(span.clone(), |(_, s)| s.clone());
        let has = |key: &str| table.contains_key(key);

        let configured = match &method {
            None => None,
            Some((text, span)) => Some(match text.as_str() {
                "client_secret_basic" => AuthMethod::Secret(Some(SecretMethod::Basic)),
                "client_secret_post" => AuthMethod::Secret(Some(SecretMethod::Post)),
                "client_secret_json" => AuthMethod::Secret(Some(SecretMethod::Json)),
                "client_secret_jwt" => AuthMethod::SecretJwt,
                "private_key_jwt" => AuthMethod::PrivateKeyJwt,
                "tls_client_auth" => AuthMethod::TlsClientAuth,
                "client_assertion" => AuthMethod::ClientAssertion,
                "none" => AuthMethod::Public,
                _ => {
                    self.error(
                        span,
                        &method_key,
                        format!("expected one of {AUTH_METHODS}; found {text:?}"),
                    );
                    return None;
                }
            }),
        };
        let method = match configured {
            Some(method) => method,
            None if has("private_key_file") && !key_signs_grant => AuthMethod::PrivateKeyJwt,
            None if has("client_assertion_file") => AuthMethod::ClientAssertion,
            None if has("client_secret") || has("client_secret_file") => {
                AuthMethod::Secret((!with_issuer).then_some(SecretMethod::Basic))
            }
            // The assertion is the credential (RFC 7523 §2.1: client authentication optional).
            None if matches!(grant, Some(Grant::JwtBearer(_))) => AuthMethod::Public,
            // The grant is invalid, and its error says so; what it would need is unknown.
            None if grant.is_none() => return None,
            None => {
                let more = if matches!(grant, Some(Grant::ClientCredentials) | None) {
                    ""
                } else {
                    ", client_assertion_file, or auth_method = \"none\" for a public client"
                };
                self.error(
                    span,
                    prefix,
                    format!(
                        "missing client_secret (or client_secret_file, or private_key_file with \
                         auth_method = \"private_key_jwt\"{more})"
                    ),
                );
                return None;
            }
        };

        // Keys this method does not use are mistakes worth pointing at.
        if !method.uses_secret() {
            for unused in ["client_secret", "client_secret_file"] {
                self.not_used(
                    table,
                    prefix,
                    unused,
                    &format!(
                        "not used with auth_method = \"{}\"; remove it",
                        method.name()
                    ),
                );
            }
        }
        if method != AuthMethod::PrivateKeyJwt && !key_signs_grant {
            self.not_used(
                table,
                prefix,
                "private_key_file",
                "only used with auth_method = \"private_key_jwt\", or to sign a jwt_bearer \
                 assertion",
            );
        }
        if !method.signs() && !key_signs_grant {
            self.not_used(
                table,
                prefix,
                "assertion_audience",
                "only used with auth_method = \"private_key_jwt\" or \"client_secret_jwt\", \
                 or to sign a jwt_bearer assertion",
            );
        }
        if method != AuthMethod::ClientAssertion {
            for unused in ["client_assertion_file", "client_assertion_type"] {
                self.not_used(
                    table,
                    prefix,
                    unused,
                    "only used with auth_method = \"client_assertion\"",
                );
            }
        }

        // Grant × method: the combinations that cannot work.
        if method == AuthMethod::Public && grant_name == Some("client_credentials") {
            self.error(
                &method_span,
                &method_key,
                "a public client cannot use grant_type = \"client_credentials\", which needs \
                 client authentication (RFC 6749 §4.4); use token_exchange or jwt_bearer",
            );
            return None;
        }
        if method == AuthMethod::PrivateKeyJwt && key_signs_grant {
            self.error(
                &method_span,
                &method_key,
                "private_key_file signs the jwt_bearer assertion, so private_key_jwt has no key \
                 of its own; give the grant an assertion_file, or choose another auth_method",
            );
            return None;
        }

        match method {
            AuthMethod::TlsClientAuth => Some(Auth::TlsClientAuth),
            AuthMethod::Public => Some(Auth::Public),
            AuthMethod::PrivateKeyJwt => {
                let key_file =
                    self.existing_file(table, prefix, "private_key_file", files::Kind::PrivateKey);
                let key_id = self.non_empty_string(table, prefix, "key_id");
                let assertion_audience = self.non_empty_string(table, prefix, "assertion_audience");
                if !has("private_key_file") {
                    self.error(
                        &method_span,
                        &method_key,
                        "private_key_jwt needs private_key_file",
                    );
                }
                Some(Auth::PrivateKeyJwt {
                    key_file: key_file?,
                    key_id,
                    assertion_audience,
                })
            }
            AuthMethod::ClientAssertion => {
                let file = self.token_file(table, prefix, "client_assertion_file");
                let assertion_type = self
                    .non_empty_string(table, prefix, "client_assertion_type")
                    .unwrap_or_else(|| JWT_BEARER_ASSERTION_TYPE.to_owned());
                if !has("client_assertion_file") {
                    self.error(
                        &method_span,
                        &method_key,
                        "client_assertion needs client_assertion_file",
                    );
                }
                Some(Auth::ClientAssertion {
                    file: file?,
                    assertion_type,
                })
            }
            AuthMethod::SecretJwt => {
                let assertion_audience = self.non_empty_string(table, prefix, "assertion_audience");
                let secret = self.secret_source(table, span, prefix)?;
                Some(Auth::ClientSecretJwt {
                    secret,
                    assertion_audience,
                })
            }
            AuthMethod::Secret(method) => Some(Auth::Secret {
                secret: self.secret_source(table, span, prefix)?,
                method,
            }),
        }
    }

    /// An error at `key` if it is present.
    fn not_used(&mut self, table: &DeTable<'_>, prefix: &str, key: &str, message: &str) {
        if let Some(span) = key_span(table, key) {
            self.error(&span, &format!("{prefix}.{key}"), message);
        }
    }

    /// A token file's path (resolved; not read: it is read at every request, and one that is
    /// missing or expired now is reported there, on /readyz, not as an invalid config).
    pub(super) fn token_file(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
        key: &str,
    ) -> Option<PathBuf> {
        let (text, span) = self.string(table, prefix, key)?;
        if text.is_empty() {
            self.error(
                &span,
                &format!("{prefix}.{key}"),
                "is empty; expected a path",
            );
            return None;
        }
        Some(self.resolve(&text))
    }

    /// `client_secret` or `client_secret_file`, exactly one.
    fn secret_source(
        &mut self,
        table: &DeTable<'_>,
        span: &Span,
        prefix: &str,
    ) -> Option<SecretSource> {
        let secret = self.string(table, prefix, "client_secret");
        let secret_file = self.string(table, prefix, "client_secret_file");
        match (secret, secret_file) {
            (Some((value, span)), None) => {
                if value.is_empty() {
                    self.error(&span, &format!("{prefix}.client_secret"), "is empty");
                    None
                } else {
                    Some(SecretSource::Inline(Secret::new(value)))
                }
            }
            (None, Some((path, span))) => {
                let path = self.resolve(&path);
                match read_secret_file(&path) {
                    Ok(loaded) => Some(SecretSource::File { path, loaded }),
                    Err(message) => {
                        self.error(&span, &format!("{prefix}.client_secret_file"), message);
                        None
                    }
                }
            }
            (Some(_), Some((_, span))) => {
                self.error(
                    &span,
                    &format!("{prefix}.client_secret_file"),
                    "expected either client_secret or client_secret_file, not both",
                );
                None
            }
            (None, None) => {
                if !table.contains_key("client_secret") && !table.contains_key("client_secret_file")
                {
                    self.error(
                        span,
                        prefix,
                        "missing client_secret (or client_secret_file, or private_key_file \
                         with auth_method = \"private_key_jwt\")",
                    );
                }
                None
            }
        }
    }

    /// `tls_cert_file` and `tls_key_file`: a client certificate for mutual TLS, both or neither.
    pub(super) fn tls_identity(
        &mut self,
        table: &DeTable<'_>,
        span: &Span,
        prefix: &str,
    ) -> Option<TlsIdentity> {
        let tls_cert = self.existing_file(table, prefix, "tls_cert_file", files::Kind::TlsCert);
        let tls_key = self.existing_file(table, prefix, "tls_key_file", files::Kind::TlsKey);
        match (tls_cert, tls_key) {
            (Some(cert_file), Some(key_file)) => Some(TlsIdentity {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                let present = if table.contains_key("tls_cert_file") {
                    "tls_cert_file"
                } else {
                    "tls_key_file"
                };
                if table.contains_key("tls_cert_file") != table.contains_key("tls_key_file") {
                    let span = key_span(table, present).unwrap_or(span.clone());
                    self.error(
                        &span,
                        &format!("{prefix}.{present}"),
                        "expected tls_cert_file and tls_key_file together",
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Auth;
    use crate::config::fixtures::parse;

    #[test]
    fn with_an_issuer_and_no_auth_method_the_method_is_left_to_discovery() {
        let config = parse(
            r#"
[clients.api]
issuer = "https://idp.example.com/realms/main"
client_id = "id"
client_secret = "secret"
[[clients.api.output]]
path = "/tmp/x"
"#,
        )
        .expect("valid");
        assert!(matches!(
            config.clients[0].request.auth,
            Auth::Secret { method: None, .. }
        ));
    }
}
