//! `bearerd token --format exec-credential`: a Kubernetes client-authentication `ExecCredential`
//! for a kubeconfig `exec` entry, in the `apiVersion` that `KUBERNETES_EXEC_INFO` asks for.
//! Pure: it reads no environment (the caller passes the variable's value) and fetches nothing.

use serde::{Deserialize, Serialize};

use crate::output;
use crate::token::Token;

/// The variable client-go sets for an exec plugin (kubectl 1.20 and later, every version).
pub const EXEC_INFO_VARIABLE: &str = "KUBERNETES_EXEC_INFO";

/// The versions of `client.authentication.k8s.io` bearerd speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApiVersion {
    /// GA since Kubernetes 1.22.
    V1,
    /// Since Kubernetes 1.11 and still read by today's clients: the default when nothing asks.
    V1beta1,
}

impl ApiVersion {
    fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "client.authentication.k8s.io/v1",
            Self::V1beta1 => "client.authentication.k8s.io/v1beta1",
        }
    }

    /// The version `KUBERNETES_EXEC_INFO` (`exec_info`, its value if set) asks for. client-go
    /// always sets it; when it is unset or empty (a person trying the command), v1beta1, which
    /// every client-go since 1.11 decodes. Anything else is an error that says what to change.
    pub(crate) fn requested(exec_info: Option<&str>) -> Result<Self, String> {
        let Some(text) = exec_info.filter(|text| !text.trim().is_empty()) else {
            return Ok(Self::V1beta1);
        };
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct ExecInfo {
            api_version: String,
        }
        let info: ExecInfo = serde_json::from_str(text).map_err(|error| {
            format!(
                "{EXEC_INFO_VARIABLE} is not an ExecCredential with an apiVersion ({error}); \
                 unset it to get {}",
                Self::V1beta1.as_str()
            )
        })?;
        [Self::V1, Self::V1beta1]
            .into_iter()
            .find(|version| version.as_str() == info.api_version)
            .ok_or_else(|| {
                format!(
                    "{EXEC_INFO_VARIABLE} asks for apiVersion {:?}, which bearerd does not \
                     speak; set the kubeconfig's exec apiVersion to {} or {}",
                    excerpt(&info.api_version),
                    Self::V1.as_str(),
                    Self::V1beta1.as_str()
                )
            })
    }
}

/// At most 100 characters of a value someone else chose, for an error message.
fn excerpt(value: &str) -> String {
    const MAX: usize = 100;
    match value.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecCredential<'a> {
    api_version: &'static str,
    kind: &'static str,
    status: Status<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    token: &'a str,
    expiration_timestamp: String,
}

/// The `ExecCredential` document for `token` and a newline: `status.token`, and
/// `status.expirationTimestamp` the token's expiry in RFC 3339 UTC (client-go runs the plugin
/// again once it has passed, or when the server answers 401). The token must already be a
/// `b64token`, so it needs no escaping, though serde escapes it anyway.
pub(crate) fn render(version: ApiVersion, token: &Token) -> Vec<u8> {
    let document = ExecCredential {
        api_version: version.as_str(),
        kind: "ExecCredential",
        status: Status {
            token: token.access_token.expose(),
            expiration_timestamp: output::rfc3339(token.expires_at),
        },
    };
    // Strings only: serializing them into memory cannot fail.
    let mut bytes =
        serde_json::to_vec(&document).expect("serializing strings into memory cannot fail");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::secret::Secret;

    fn token() -> Token {
        Token {
            access_token: Secret::new("abc.def-ghi"),
            token_type: "Bearer".to_owned(),
            scope: Some("tasks:read".to_owned()),
            issued_at: UNIX_EPOCH + Duration::from_secs(1_795_922_150 - 300),
            expires_at: UNIX_EPOCH + Duration::from_secs(1_795_922_150),
            issued_token_type: None,
        }
    }

    #[test]
    fn the_version_is_the_one_client_go_asks_for() {
        let v1 = r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}"#;
        let v1beta1 = r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{}}"#;
        assert_eq!(ApiVersion::requested(Some(v1)), Ok(ApiVersion::V1));
        assert_eq!(
            ApiVersion::requested(Some(v1beta1)),
            Ok(ApiVersion::V1beta1)
        );
        assert_eq!(ApiVersion::requested(None), Ok(ApiVersion::V1beta1));
        assert_eq!(ApiVersion::requested(Some("")), Ok(ApiVersion::V1beta1));
        assert_eq!(ApiVersion::requested(Some("  \n")), Ok(ApiVersion::V1beta1));
    }

    #[test]
    fn an_unknown_version_or_junk_is_an_error_that_names_it() {
        let v1alpha1 = r#"{"apiVersion":"client.authentication.k8s.io/v1alpha1"}"#;
        assert_eq!(
            ApiVersion::requested(Some(v1alpha1)),
            Err("KUBERNETES_EXEC_INFO asks for apiVersion \
                 \"client.authentication.k8s.io/v1alpha1\", which bearerd does not speak; set \
                 the kubeconfig's exec apiVersion to client.authentication.k8s.io/v1 or \
                 client.authentication.k8s.io/v1beta1"
                .to_owned())
        );
        let hostile = format!(r#"{{"apiVersion":"\u001b[2J{}"}}"#, "x".repeat(5000));
        let message = ApiVersion::requested(Some(&hostile)).expect_err("refused");
        assert!(message.contains(r#""\u{1b}[2Jxxx"#), "{message}");
        assert!(message.len() < 400, "{message}");
        for junk in ["not json", "{}", r#"{"apiVersion":1}"#, "[]", "null"] {
            let message = ApiVersion::requested(Some(junk)).expect_err(junk);
            assert!(
                message.starts_with(
                    "KUBERNETES_EXEC_INFO is not an ExecCredential with an apiVersion ("
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn each_version_has_its_shape() {
        for (version, api_version) in [
            (ApiVersion::V1, "client.authentication.k8s.io/v1"),
            (ApiVersion::V1beta1, "client.authentication.k8s.io/v1beta1"),
        ] {
            let bytes = render(version, &token());
            assert_eq!(
                String::from_utf8(bytes).expect("UTF-8"),
                format!(
                    "{{\"apiVersion\":\"{api_version}\",\"kind\":\"ExecCredential\",\
                     \"status\":{{\"token\":\"abc.def-ghi\",\
                     \"expirationTimestamp\":\"2026-11-29T03:15:50Z\"}}}}\n"
                )
            );
        }
    }
}
