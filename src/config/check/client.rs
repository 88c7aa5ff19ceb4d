//! A `[clients.NAME]` table: its endpoint, id, audience, scope and extra parameters, the
//! sections it is made of (grant, credentials, outputs, on_refresh) and `on_expiry`, into a
//! [`ClientSpec`]. It checks no section another file owns.

use std::collections::BTreeMap;

use toml::de::DeTable;

use super::{Checker, Span, key_span};
use crate::config::{Auth, ClientName, ClientSpec, Endpoint, OnExpiry, RequestSpec, TlsSettings};
use crate::files;

const CLIENT_KEYS: &[&str] = &[
    "token_url",
    "issuer",
    "client_id",
    "client_secret",
    "client_secret_file",
    "audience",
    "scope",
    "auth_method",
    "private_key_file",
    "key_id",
    "assertion_audience",
    "client_assertion_file",
    "client_assertion_type",
    "grant_type",
    "subject_token_file",
    "subject_token_type",
    "actor_token_file",
    "actor_token_type",
    "requested_token_type",
    "assertion_file",
    "assertion_issuer",
    "assertion_subject",
    "tls_cert_file",
    "tls_key_file",
    "ca_file",
    "proxy",
    "extra_params",
    "allow_insecure_http",
    "output",
    "on_refresh",
    "on_expiry",
];

/// Parameters bearerd sets itself; `extra_params` may not override them.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
    "audience",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "assertion",
];

impl Checker<'_> {
    pub(super) fn client(
        &mut self,
        name: ClientName,
        table: &DeTable<'_>,
        span: Span,
        prefix: &str,
    ) -> Option<ClientSpec> {
        self.unknown_keys(table, prefix, CLIENT_KEYS);
        let errors_before = self.diagnostics.len();
        let allow_insecure_http = self
            .boolean(table, prefix, "allow_insecure_http")
            .unwrap_or(false);

        let token_url = self.url(table, prefix, "token_url", allow_insecure_http);
        let issuer = self.url(table, prefix, "issuer", allow_insecure_http);
        let endpoint = match (token_url, issuer) {
            (Some(url), None) => Some(Endpoint::TokenUrl(url)),
            (None, Some(url)) => Some(Endpoint::Issuer(url)),
            (Some(_), Some(_)) => {
                let span = key_span(table, "issuer").unwrap_or(span.clone());
                self.error(
                    &span,
                    prefix,
                    "expected either token_url or issuer, not both",
                );
                None
            }
            (None, None) => {
                if !table.contains_key("token_url") && !table.contains_key("issuer") {
                    self.error(
                        &span,
                        prefix,
                        "missing token_url (or issuer, for OIDC discovery)",
                    );
                }
                None
            }
        };

        let client_id = self.required_string(table, &span, prefix, "client_id");
        let audience = self.non_empty_string(table, prefix, "audience");
        let scope = self.non_empty_string(table, prefix, "scope");
        let extra_params = self.extra_params(table, prefix);
        let grant = self.grant(table, &span, prefix);
        let auth = self.auth(
            table,
            &span,
            prefix,
            matches!(endpoint, Some(Endpoint::Issuer(_))),
            grant.as_ref(),
        );

        let ca_file = self.existing_file(table, prefix, "ca_file", files::Kind::CaFile);
        let identity = self.tls_identity(table, &span, prefix);
        if matches!(auth, Some(Auth::TlsClientAuth))
            && identity.is_none()
            && self.diagnostics.len() == errors_before
        {
            let span = key_span(table, "auth_method").unwrap_or(span.clone());
            self.error(
                &span,
                &format!("{prefix}.auth_method"),
                "tls_client_auth needs tls_cert_file and tls_key_file",
            );
        }
        let proxy = self.url(table, prefix, "proxy", true);

        let outputs = self.outputs(table, &span, prefix, &name);
        let on_refresh = match table.get("on_refresh") {
            Some(value) => {
                let key = format!("{prefix}.on_refresh");
                self.as_table(value, &key)
                    .and_then(|t| self.on_refresh(t, value.span(), &key))
            }
            None => None,
        };
        let on_expiry = match self.string(table, prefix, "on_expiry") {
            None => OnExpiry::Keep,
            Some((text, span)) => match text.as_str() {
                "keep" => OnExpiry::Keep,
                "remove" => OnExpiry::Remove,
                _ => {
                    self.error(
                        &span,
                        &format!("{prefix}.on_expiry"),
                        format!("expected \"keep\" or \"remove\", found {text:?}"),
                    );
                    OnExpiry::Keep
                }
            },
        };

        if self.diagnostics.len() != errors_before {
            return None;
        }
        Some(ClientSpec {
            name,
            request: RequestSpec {
                endpoint: endpoint?,
                client_id: client_id?,
                auth: auth?,
                grant: grant?,
                audience,
                scope,
                extra_params,
                tls: TlsSettings {
                    ca_file,
                    identity,
                    proxy: proxy.map(Box::new),
                },
                allow_insecure_http,
            },
            outputs: outputs?,
            on_refresh: on_refresh.map(Box::new),
            on_expiry,
        })
    }

    pub(super) fn extra_params(
        &mut self,
        table: &DeTable<'_>,
        prefix: &str,
    ) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        let key = format!("{prefix}.extra_params");
        let Some(value) = table.get("extra_params") else {
            return params;
        };
        let Some(params_table) = self.as_table(value, &key) else {
            return params;
        };
        for (name, value) in params_table {
            let name_text = name.get_ref().to_string();
            let item_key = format!("{key}.{name_text}");
            if RESERVED_PARAMS.contains(&name_text.as_str()) {
                self.error(
                    &name.span(),
                    &item_key,
                    format!("{name_text} is set by bearerd; use the client key of that name"),
                );
                continue;
            }
            if let Some(text) = self.expect_string(value, &item_key) {
                params.insert(name_text, text);
            }
        }
        params
    }
}
