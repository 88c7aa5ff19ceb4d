//! One token request: a client's credentials, OIDC discovery, and the response turned into a
//! [`Token`](crate::token::Token) or a [`FetchError`] classified for the caller's retry loop.
//! It never retries, sleeps or writes files; below `Session`, `now` is always an argument,
//! and the session reads the caller's clock once per request.
//!
//! # Layout (each file imports only those above it; `token_file` before `credentials`, `grant`)
//! - `error`: [`FetchError`], what the worker branches on.
//! - `jwt`: signing keys and the assertions bearerd signs (`private_key_jwt`,
//!   `client_secret_jwt`, a self-signed `jwt_bearer` grant).
//! - `response`: a response's bytes → `Token` | `FetchError` (pure; fuzzed): expiry, syntax
//!   checks, OAuth error codes, `Retry-After`, excerpts and redaction.
//! - `http`: the reqwest client (TLS files, proxy, system roots), `HttpClients` (one per TLS
//!   setting), a response read under its size cap, reqwest and rustls errors in plain words.
//! - `discovery`: the OIDC discovery document fetched and checked.
//! - `token_file`: a token made elsewhere, read from its file at every use and refused when
//!   empty, expired or not yet valid.
//! - `credentials`: the client authentication method, its credential files read at use.
//! - `grant`: the grant (`client_credentials`, `token_exchange`, `jwt_bearer`) read at use.
//! - `request`: one `TokenRequest` built, sent once, and its response read, with every
//!   credential it carried redacted from errors.
//! - `session`: `Session`, what a worker asks for: a token for one client's settings, with
//!   its discovery document cached.

mod credentials;
mod discovery;
mod error;
#[cfg(test)]
mod fixtures;
mod grant;
mod http;
mod jwt;
mod request;
mod response;
mod roots;
mod session;
mod token_file;

pub(crate) use self::credentials::fingerprint_key;
pub use self::error::FetchError;
pub(crate) use self::http::HttpClients;
pub use self::http::{Roots, http_client};
pub use self::response::{MAX_LIFETIME, MIN_LIFETIME, parse_response};
pub(crate) use self::session::Session;
