//! [`FetchError`]: why one token request produced no token, classified for the retry loop
//! (transient or permanent, `Retry-After`, an endpoint that may have moved). It decides
//! nothing about retrying: the worker does.

use std::time::Duration;

/// Why a request did not produce a token, classified for the retry loop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// May heal by itself (connection trouble, timeouts, 5xx, 429, a malformed response): retry
    /// with backoff, but not before `retry_after` when the server sent `Retry-After`.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
        /// The endpoint could not be reached at all: a discovered endpoint may have moved.
        endpoint_unreachable: bool,
    },
    /// Will not heal without a change of configuration or server (`invalid_client`, 401, 403,
    /// most 4xx, a hostile token): report loudly and retry slowly.
    #[error("{message}")]
    Permanent {
        message: String,
        /// The endpoint answered 404: a discovered endpoint may have moved.
        endpoint_unreachable: bool,
    },
    /// A token file (a client assertion, a subject, actor or assertion token) is unreadable,
    /// empty, expired or not yet valid: nothing was sent. Heals when the file is rewritten;
    /// retried like a transient failure, and at once when the file changes.
    #[error("{message}")]
    TokenFile { message: String },
}

impl FetchError {
    /// A transient failure without `Retry-After`.
    pub(crate) fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
            endpoint_unreachable: false,
        }
    }

    /// A permanent failure.
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
            endpoint_unreachable: false,
        }
    }

    /// A token file that could not be used.
    pub(crate) fn token_file(message: impl Into<String>) -> Self {
        Self::TokenFile {
            message: message.into(),
        }
    }

    /// The failure was a token file's, and nothing was sent.
    pub(crate) fn is_token_file(&self) -> bool {
        matches!(self, Self::TokenFile { .. })
    }

    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent { .. })
    }

    /// The server's `Retry-After`, for a transient failure that carried one.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            Self::Permanent { .. } | Self::TokenFile { .. } => None,
        }
    }

    /// A connection error or a 404: the caller should fetch the discovery document again.
    pub(crate) fn endpoint_unreachable(&self) -> bool {
        match self {
            Self::Transient {
                endpoint_unreachable,
                ..
            }
            | Self::Permanent {
                endpoint_unreachable,
                ..
            } => *endpoint_unreachable,
            Self::TokenFile { .. } => false,
        }
    }

    /// The one-line description, as `Display` prints it.
    pub fn message(&self) -> &str {
        match self {
            Self::Transient { message, .. }
            | Self::Permanent { message, .. }
            | Self::TokenFile { message } => message,
        }
    }

    pub(super) fn map_message(self, change: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Transient {
                message,
                retry_after,
                endpoint_unreachable,
            } => Self::Transient {
                message: change(message),
                retry_after,
                endpoint_unreachable,
            },
            Self::Permanent {
                message,
                endpoint_unreachable,
            } => Self::Permanent {
                message: change(message),
                endpoint_unreachable,
            },
            Self::TokenFile { message } => Self::TokenFile {
                message: change(message),
            },
        }
    }
}
