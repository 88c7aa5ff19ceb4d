//! How a client proves who it is, as configured: `auth_method`, its secret (inline or a file),
//! its private key, and its TLS client certificate, into an [`Auth`] and a [`TlsIdentity`].
//! It reads a credential file only to check it; the request reads it again at use.

use toml::de::DeTable;

use super::{Checker, Span, key_span};
use crate::config::client::read_secret_file;
use crate::config::{Auth, SecretMethod, SecretSource, TlsIdentity};
use crate::files;
use crate::secret::Secret;

/// `auth_method`, as configured.
#[derive(Clone, Copy, PartialEq)]
enum AuthMethod {
    Secret(SecretMethod),
    PrivateKeyJwt,
    TlsClientAuth,
}

impl Checker<'_> {
    pub(super) fn auth(
        &mut self,
        table: &DeTable<'_>,
        span: &Span,
        prefix: &str,
        with_issuer: bool,
    ) -> Option<Auth> {
        let method = self.string(table, prefix, "auth_method");
        let secret = self.string(table, prefix, "client_secret");
        let secret_file = self.string(table, prefix, "client_secret_file");
        let key_file =
            self.existing_file(table, prefix, "private_key_file", files::Kind::PrivateKey);
        let key_id = self.non_empty_string(table, prefix, "key_id");
        let assertion_audience = self.non_empty_string(table, prefix, "assertion_audience");
        let method_key = format!("{prefix}.auth_method");
        let method_span = method.as_ref().map_or(span.clone(), |(_, s)| s.clone());

        let configured_method = match &method {
            None => None,
            Some((text, span)) => match text.as_str() {
                "client_secret_basic" => Some(AuthMethod::Secret(SecretMethod::Basic)),
                "client_secret_post" => Some(AuthMethod::Secret(SecretMethod::Post)),
                "client_secret_json" => Some(AuthMethod::Secret(SecretMethod::Json)),
                "private_key_jwt" => Some(AuthMethod::PrivateKeyJwt),
                "tls_client_auth" => Some(AuthMethod::TlsClientAuth),
                _ => {
                    self.error(
                        span,
                        &method_key,
                        format!(
                            "expected one of client_secret_basic, client_secret_post, \
                             client_secret_json, private_key_jwt, tls_client_auth; found {text:?}"
                        ),
                    );
                    return None;
                }
            },
        };
        let uses_secret = match configured_method {
            Some(AuthMethod::PrivateKeyJwt | AuthMethod::TlsClientAuth) => false,
            Some(AuthMethod::Secret(_)) => true,
            None => key_file.is_none() && !table.contains_key("private_key_file"),
        };
        if !uses_secret {
            for unused in ["client_secret", "client_secret_file"] {
                if let Some(span) = key_span(table, unused) {
                    self.error(
                        &span,
                        &format!("{prefix}.{unused}"),
                        format!(
                            "not used with auth_method = \"{}\"; remove it",
                            match configured_method {
                                Some(AuthMethod::TlsClientAuth) => "tls_client_auth",
                                _ => "private_key_jwt",
                            }
                        ),
                    );
                }
            }
        } else if let Some(span) = key_span(table, "private_key_file") {
            self.error(
                &span,
                &format!("{prefix}.private_key_file"),
                "only used with auth_method = \"private_key_jwt\"",
            );
        }
        if configured_method != Some(AuthMethod::PrivateKeyJwt)
            && (configured_method.is_some() || uses_secret)
            && let Some(span) = key_span(table, "assertion_audience")
        {
            self.error(
                &span,
                &format!("{prefix}.assertion_audience"),
                "only used with auth_method = \"private_key_jwt\"",
            );
        }
        if configured_method == Some(AuthMethod::TlsClientAuth) {
            return Some(Auth::TlsClientAuth);
        }
        if !uses_secret {
            return match key_file {
                Some(key_file) => Some(Auth::PrivateKeyJwt {
                    key_file,
                    key_id,
                    assertion_audience,
                }),
                None => {
                    if !table.contains_key("private_key_file") {
                        self.error(
                            &method_span,
                            &method_key,
                            "private_key_jwt needs private_key_file",
                        );
                    }
                    None
                }
            };
        }
        let source = match (secret, secret_file) {
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
        };
        let method = match configured_method {
            Some(AuthMethod::Secret(method)) => Some(method),
            // Returned above: neither uses a secret.
            Some(AuthMethod::PrivateKeyJwt | AuthMethod::TlsClientAuth) => None,
            None if with_issuer => None,
            None => Some(SecretMethod::Basic),
        };
        Some(Auth::Secret {
            secret: source?,
            method,
        })
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
