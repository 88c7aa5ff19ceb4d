//! One token request: client authentication, OIDC discovery, and the response turned into a
//! [`Token`] or a [`FetchError`]. It never retries, sleeps or writes files.

use std::time::SystemTime;

use crate::secret::Secret;

/// A token as issued, after validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub access_token: Secret,
    /// As the server spelled it; compared case-insensitively.
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}
