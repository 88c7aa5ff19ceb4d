//! The `reqwest` client and what it says: the client for one set of TLS settings (`ca_file`,
//! the client identity, a proxy, the system's roots), `HttpClients` that shares one per
//! distinct setting, a response read under its size cap, and reqwest and rustls errors turned
//! into messages a person can act on. It never retries or follows a redirect (reqwest's own
//! retries and redirects are off) and never looks inside a response body.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use reqwest::header::{CONTENT_TYPE, DATE, HeaderValue, RETRY_AFTER};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use url::Url;

use super::error::FetchError;
use super::response::{excerpt, status_line};
use crate::config::{Endpoint, TlsSettings, display_url};
use crate::files;

/// Sent as `User-Agent` with every request.
pub(super) const USER_AGENT: &str = concat!("bearerd/", env!("CARGO_PKG_VERSION"));

/// Responses larger than this are not read further (a token response is a few KiB at most).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Which root certificates an HTTP client trusts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Roots {
    /// The system's root store, and `ca_file`'s certificates if there is one.
    System,
    /// Only `ca_file`'s: for a plain-`http` token URL, which never does TLS, so the system's
    /// store is not parsed.
    CaFileOnly,
}

/// The HTTP clients of one `[agent]`: one per distinct TLS setting (and need of the system's
/// roots), so connection pools and root stores are shared between the clients that use it.
pub(crate) struct HttpClients {
    timeout: Duration,
    cached: Mutex<HashMap<(TlsSettings, Roots), reqwest::Client>>,
}

impl HttpClients {
    /// No client yet; each is built at its first use, with `timeout` for connecting and for
    /// every request.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            cached: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the cached HTTP clients, so that the next request reads certificates, keys and CA
    /// files again (after a reload: they may have been rotated in place).
    pub(crate) fn forget(&self) {
        self.cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    /// The HTTP client for a client's endpoint and TLS settings. Only a plain-`http` token URL
    /// goes without the system's roots (an issuer may name an `https` token endpoint).
    pub(super) fn for_endpoint(
        &self,
        endpoint: &Endpoint,
        tls: &TlsSettings,
    ) -> Result<reqwest::Client, String> {
        let roots = match endpoint {
            Endpoint::TokenUrl(url) if url.scheme() == "http" => Roots::CaFileOnly,
            _ => Roots::System,
        };
        let key = (tls.clone(), roots);
        let mut clients = self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(http) = clients.get(&key) {
            return Ok(http.clone());
        }
        let http = http_client(self.timeout, tls, roots)?;
        clients.insert(key, http.clone());
        Ok(http)
    }
}

/// The HTTP client for one set of TLS settings, trusting `roots`.
/// Share it (through `HttpClients`): it holds the connection pool, and loading the system's
/// roots (`roots`: the CA bundle alone where there is one) is a good part of a one-client
/// `run --once` (BENCHMARKS.md); a client whose token endpoint is plain `http` never does TLS,
/// so it skips them.
///
/// Redirects are off (credentials must not follow a redirect) and so are reqwest's own retries.
pub fn http_client(
    timeout: Duration,
    tls: &TlsSettings,
    roots: Roots,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .user_agent(USER_AGENT)
        .tls_built_in_native_certs(false);
    if roots == Roots::System {
        for root in super::roots::system_roots() {
            let root = reqwest::Certificate::from_der(&root)
                .map_err(|error| format!("a system root certificate: {}", error_chain(&error)))?;
            builder = builder.add_root_certificate(root);
        }
    }
    if let Some(path) = &tls.ca_file {
        let pem = files::read(path, files::Kind::CaFile).map_err(|error| error.to_string())?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| format!("ca_file {}: {}", path.display(), error_chain(&error)))?;
        if certificates.is_empty() {
            return Err(format!(
                "ca_file {}: no PEM certificate (BEGIN CERTIFICATE) found",
                path.display()
            ));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(identity) = &tls.identity {
        let cert_path = &identity.cert_file;
        let key_path = &identity.key_file;
        let mut pem =
            files::read(cert_path, files::Kind::TlsCert).map_err(|error| error.to_string())?;
        if CertificateDer::pem_slice_iter(&pem).next().is_none() {
            return Err(format!(
                "tls_cert_file {}: no PEM certificate (BEGIN CERTIFICATE) found",
                cert_path.display()
            ));
        }
        let key = files::read(key_path, files::Kind::TlsKey).map_err(|error| error.to_string())?;
        if PrivateKeyDer::from_pem_slice(&key).is_err() {
            return Err(format!(
                "tls_key_file {}: no usable PEM private key found (expected BEGIN PRIVATE KEY, \
                 BEGIN RSA PRIVATE KEY or BEGIN EC PRIVATE KEY)",
                key_path.display()
            ));
        }
        pem.push(b'\n');
        pem.extend_from_slice(&key);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|error| {
            format!(
                "tls_cert_file {} with tls_key_file {}: {}",
                cert_path.display(),
                key_path.display(),
                error_chain(&error)
            )
        })?;
        builder = builder.identity(identity);
    }
    if let Some(proxy) = &tls.proxy {
        let proxy_display = display_url(proxy);
        let proxy = reqwest::Proxy::all(proxy.as_str())
            .map_err(|error| format!("proxy {proxy_display}: {}", error_chain(&error)))?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|error| {
        // The files parsed, but rustls may still refuse them (say, a key that does not match
        // its certificate): name them.
        let mut files = Vec::new();
        if let Some(path) = &tls.ca_file {
            files.push(format!("ca_file {}", path.display()));
        }
        if let Some(identity) = &tls.identity {
            files.push(format!("tls_cert_file {}", identity.cert_file.display()));
            files.push(format!("tls_key_file {}", identity.key_file.display()));
        }
        let context = if files.is_empty() {
            String::new()
        } else {
            format!(" with {}", files.join(", "))
        };
        format!(
            "cannot set up the HTTP client{context}: {}",
            error_chain(&error)
        )
    })
}

/// What of a response is looked at.
pub(super) struct RawResponse {
    pub(super) status: u16,
    pub(super) retry_after: Option<String>,
    pub(super) content_type: Option<String>,
    pub(super) date: Option<String>,
    pub(super) body: Vec<u8>,
}

/// The response with at most [`MAX_BODY_BYTES`] of its body. A 2xx body over the cap is an
/// error; an error status's body is cut at the cap (only an excerpt of it is used).
pub(super) async fn read_response(
    mut response: reqwest::Response,
) -> Result<RawResponse, FetchError> {
    let status = response.status().as_u16();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header(RETRY_AFTER);
    let content_type = header(CONTENT_TYPE);
    let date = header(DATE);
    let success = (200..300).contains(&status);
    let mut body = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                return Err(FetchError::transient(format!(
                    "{} but reading the body failed: {}",
                    status_line(status),
                    cause(error)
                )));
            }
        };
        let room = MAX_BODY_BYTES - body.len();
        if chunk.len() > room {
            if success {
                return Err(FetchError::transient(format!(
                    "{} but the body is larger than {} KiB",
                    status_line(status),
                    MAX_BODY_BYTES / 1024
                )));
            }
            body.extend_from_slice(&chunk[..room]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(RawResponse {
        status,
        retry_after,
        content_type,
        date,
        body,
    })
}

/// A failed send: connection trouble is transient and marks the endpoint unreachable; a
/// server certificate that cannot be trusted is permanent, since retrying cannot change it.
pub(super) fn request_failed(what: &str, error: reqwest::Error) -> FetchError {
    let endpoint_unreachable = error.is_connect();
    let host = error
        .url()
        .and_then(Url::host_str)
        .unwrap_or("the server")
        .to_owned();
    if let Some(problem) = tls_error(&error).and_then(|tls| certificate_problem(&host, tls)) {
        return FetchError::Permanent {
            message: format!("{what}: {problem}"),
            endpoint_unreachable,
        };
    }
    let message = format!("{what}: {}", cause(error));
    FetchError::Transient {
        message,
        retry_after: None,
        endpoint_unreachable,
    }
}

/// The rustls error somewhere in `error`'s sources. An `io::Error` reports the source of the
/// error it wraps, not that error (here an io::Error wrapping an io::Error wrapping rustls's),
/// so each one is unwrapped by hand.
fn tls_error(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut next = error.source();
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner),
            None => current.source(),
        };
    }
    None
}

/// What is wrong with the certificate `host` presented, in words a person can act on; `None`
/// when `error` is not about the server's certificate.
fn certificate_problem(host: &str, error: &rustls::Error) -> Option<String> {
    use rustls::CertificateError as E;
    let rustls::Error::InvalidCertificate(error) = error else {
        return None;
    };
    let subject = format!("the server certificate for {host}");
    Some(match error {
        E::UnknownIssuer => format!(
            "{subject} is not signed by a trusted CA; set ca_file to the PEM file of the CA \
             that signed it (ca_file is trusted besides the system's CAs)"
        ),
        E::Other(other)
            if matches!(
                other.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            format!(
                "{subject} is a CA certificate, not a server certificate (a self-signed one \
                 from `openssl req -x509` is a CA by default); have the server present a \
                 certificate its CA signed, and give ca_file the CA that signed the server's \
                 own certificate"
            )
        }
        E::NotValidForNameContext { presented, .. } if !presented.is_empty() => format!(
            "{subject} is for other names ({}); use one of them in the URL, or have the \
             server present a certificate for {host}",
            presented_names(presented)
        ),
        E::NotValidForNameContext { .. } => format!(
            "{subject} names no host in its subjectAltName (its common name alone does not \
             count); have the server present a certificate whose subjectAltName has {host}"
        ),
        E::NotValidForName => format!(
            "{subject} is for other names; use one of them in the URL, or have the server \
             present a certificate for {host}"
        ),
        E::ExpiredContext { time, not_after } => format!(
            "{subject} expired on {} (this machine's clock reads {}); the server must renew it",
            unix_time(*not_after),
            unix_time(*time)
        ),
        E::Expired => format!("{subject} has expired; the server must renew it"),
        E::NotValidYetContext { time, not_before } => format!(
            "{subject} is not valid until {} (this machine's clock reads {}); check this \
             machine's clock, or have the server present a certificate valid now",
            unix_time(*not_before),
            unix_time(*time)
        ),
        E::NotValidYet => format!(
            "{subject} is not valid yet; check this machine's clock, or have the server \
             present a certificate valid now"
        ),
        E::Revoked => format!("{subject} has been revoked; the server must replace it"),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => format!(
            "{subject} is not for TLS servers (its extended key usage lacks serverAuth); the \
             server must present a server certificate"
        ),
        E::BadSignature => format!(
            "{subject} does not carry a valid signature of its issuer; the server's chain is \
             broken, or ca_file holds another CA with the same name"
        ),
        E::BadEncoding => format!("{subject} is malformed (it is not valid DER)"),
        other => format!(
            "{subject} was refused: {}",
            excerpt(other.to_string().as_bytes())
        ),
    })
}

/// Subject names from a certificate (webpki writes them as `DnsName("a.example")` and
/// `IpAddress(10.0.0.1)`), plain, few and printable: the server chose them.
fn presented_names(presented: &[String]) -> String {
    const SHOWN: usize = 5;
    const CHARS: usize = 64;
    let mut names: Vec<String> = presented
        .iter()
        .take(SHOWN)
        .map(|name| {
            let plain = name
                .strip_prefix("DnsName(\"")
                .and_then(|rest| rest.strip_suffix("\")"))
                .or_else(|| {
                    name.strip_prefix("IpAddress(")
                        .and_then(|rest| rest.strip_suffix(')'))
                })
                .unwrap_or(name);
            let mut shown: String = plain
                .chars()
                .take(CHARS)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect();
            if plain.chars().nth(CHARS).is_some() {
                shown.push('…');
            }
            shown
        })
        .collect();
    if presented.len() > SHOWN {
        names.push(format!("and {} more", presented.len() - SHOWN));
    }
    names.join(", ")
}

/// RFC 3339 in UTC, as far as humantime can print it (up to the year 9999).
fn unix_time(time: rustls_pki_types::UnixTime) -> String {
    const YEAR_10000: u64 = 253_402_300_800;
    let seconds = time.as_secs();
    if seconds >= YEAR_10000 {
        return format!("unix time {seconds}");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string()
}

/// The useful part of a reqwest error: the innermost cause, with common I/O errors named
/// plainly. reqwest's own top line names the URL with its query; it is not used.
pub(super) fn cause(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut innermost = None;
    let mut source = error.source();
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            let plain = match io.kind() {
                ErrorKind::ConnectionRefused => Some("connection refused"),
                ErrorKind::ConnectionReset => Some("connection reset"),
                ErrorKind::ConnectionAborted => Some("connection aborted"),
                ErrorKind::TimedOut => Some("timed out"),
                ErrorKind::UnexpectedEof => Some("connection closed unexpectedly"),
                _ => None,
            };
            if let Some(plain) = plain {
                return plain.to_owned();
            }
        }
        innermost = Some(current.to_string());
        source = current.source();
    }
    innermost.unwrap_or_else(|| error.without_url().to_string())
}

/// An error and its sources, joined with ": " (for setup errors, which carry no secrets).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        let next = current.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = current.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test fixtures are written with std::fs::write
mod tests {
    use super::*;
    use crate::oauth::fixtures::{EC_CERT, EC_SEC1};

    #[test]
    fn http_client_loads_a_ca_bundle_and_an_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let bundle = write("ca.pem", &format!("{EC_CERT}{EC_CERT}"));
        let cert = write("cert.pem", EC_CERT);
        let key = write("key.pem", EC_SEC1);
        let junk = write("junk.pem", "nothing here");
        let missing = dir.path().join("missing.pem");
        let timeout = Duration::from_secs(1);
        let tls = |ca_file: Option<&std::path::Path>,
                   identity: Option<(&std::path::Path, &std::path::Path)>| {
            TlsSettings {
                ca_file: ca_file.map(ToOwned::to_owned),
                identity: identity.map(|(cert, key)| crate::config::TlsIdentity {
                    cert_file: cert.to_owned(),
                    key_file: key.to_owned(),
                }),
                proxy: None,
            }
        };
        http_client(
            timeout,
            &tls(Some(&bundle), Some((&cert, &key))),
            Roots::System,
        )
        .expect("client");
        for (settings, path) in [
            (tls(Some(&missing), None), &missing),
            (tls(Some(&junk), None), &junk),
            (tls(None, Some((&junk, &key))), &junk),
            (tls(None, Some((&cert, &junk))), &junk),
            (tls(None, Some((&cert, &missing))), &missing),
        ] {
            let message = http_client(timeout, &settings, Roots::System).expect_err("refused");
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        let proxied = TlsSettings {
            proxy: Some(Box::new(
                Url::parse("http://user:pw@proxy.example:3128").expect("url"),
            )),
            ..TlsSettings::default()
        };
        http_client(timeout, &proxied, Roots::System).expect("client with proxy");
    }

    #[test]
    fn certificate_errors_are_explained_and_other_tls_errors_are_not() {
        use rustls::CertificateError as E;
        use rustls_pki_types::{ServerName, UnixTime};
        let at = |seconds: u64| UnixTime::since_unix_epoch(Duration::from_secs(seconds));
        let explain = |error: E| {
            certificate_problem("idp.example", &rustls::Error::InvalidCertificate(error))
                .expect("a certificate problem")
        };
        let subject = "the server certificate for idp.example";
        assert_eq!(
            explain(E::ExpiredContext {
                time: at(1_700_000_000),
                not_after: at(1_600_000_000),
            }),
            format!(
                "{subject} expired on 2020-09-13T12:26:40Z (this machine's clock reads \
                 2023-11-14T22:13:20Z); the server must renew it"
            )
        );
        assert!(explain(E::Expired).ends_with("has expired; the server must renew it"));
        assert!(
            explain(E::NotValidYetContext {
                time: at(1_600_000_000),
                not_before: at(u64::MAX),
            })
            .starts_with(&format!(
                "{subject} is not valid until unix time {} (this machine's clock reads \
                 2020-09-13T12:26:40Z)",
                u64::MAX
            ))
        );
        assert!(explain(E::NotValidYet).contains("is not valid yet; check this machine's clock"));
        assert!(explain(E::Revoked).ends_with("has been revoked; the server must replace it"));
        assert!(explain(E::UnknownIssuer).contains("is not signed by a trusted CA; set ca_file"));
        let ca = E::Other(rustls::OtherError(std::sync::Arc::new(
            webpki::Error::CaUsedAsEndEntity,
        )));
        assert!(explain(ca).contains("is a CA certificate, not a server certificate"));
        let odd = E::Other(rustls::OtherError(std::sync::Arc::new(
            webpki::Error::EndEntityUsedAsCa,
        )));
        assert!(explain(odd).starts_with(&format!("{subject} was refused: ")));

        // The names come from the server: plain, printable, few and short.
        let expected = ServerName::try_from("idp.example").expect("name");
        let mut presented = vec![
            "DnsName(\"a.example\")".to_owned(),
            "IpAddress(10.0.0.1)".to_owned(),
            "DnsName(\"evil\nline\u{202e}\")".to_owned(),
            format!("DnsName(\"{}\")", "x".repeat(300)),
        ];
        presented.extend((0..4).map(|n| format!("DnsName(\"{n}.example\")")));
        let message = explain(E::NotValidForNameContext {
            expected: expected.clone(),
            presented,
        });
        let long = format!("{}…", "x".repeat(64));
        assert_eq!(
            message,
            format!(
                "{subject} is for other names (a.example, 10.0.0.1, evil?line?, {long}, \
                 0.example, and 3 more); use one of them in the URL, or have the server \
                 present a certificate for idp.example"
            )
        );
        assert!(
            explain(E::NotValidForNameContext {
                expected,
                presented: Vec::new(),
            })
            .contains("names no host in its subjectAltName")
        );

        for other in [
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
            rustls::Error::General("x".into()),
        ] {
            assert_eq!(certificate_problem("idp.example", &other), None);
        }
    }
}
