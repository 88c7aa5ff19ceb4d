//! A tiny HTTPS server on 127.0.0.1 that presents one certificate chain and answers every
//! request with one fixed JSON body, counting connections and recording each `Authorization`.
//! It checks no credentials and speaks only enough HTTP/1.1 for one request a connection.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub struct TlsServer {
    pub address: SocketAddr,
    connections: Arc<AtomicUsize>,
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
}

impl TlsServer {
    /// Serves the PEM chain in `cert` with `key`, answering every request with `body`.
    pub fn start(cert: &Path, key: &Path, body: &str) -> TlsServer {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("server certificate")
            .collect::<Result<_, _>>()
            .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_file(key).expect("server key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server TLS config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the TLS server");
        let address = listener.local_addr().expect("address");
        let connections = Arc::new(AtomicUsize::new(0));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (counted, recorded, stopped) = (
            Arc::clone(&connections),
            Arc::clone(&authorizations),
            Arc::clone(&stop),
        );
        let body: Arc<str> = body.into();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let (config, recorded, body) = (
                    Arc::clone(&config),
                    Arc::clone(&recorded),
                    Arc::clone(&body),
                );
                std::thread::spawn(move || serve(config, stream, &recorded, &body));
            }
        });
        TlsServer {
            address,
            connections,
            authorizations,
            stop,
        }
    }

    /// `https://ADDRESS/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    /// Connections accepted, handshakes refused included: one per attempt of a client's.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The `Authorization` header of each request read, in order (`None` where it had none).
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.authorizations.lock().expect("authorizations").clone()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.address);
    }
}

/// One connection: the handshake (where a refused certificate ends it), one request read to
/// the end of its body with its `Authorization` recorded, one answer.
fn serve(
    config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    recorded: &Mutex<Vec<Option<String>>>,
    body: &str,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut reader = BufReader::new(rustls::StreamOwned::new(connection, stream));
    let (mut length, mut authorization) = (0, None);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    recorded.lock().expect("authorizations").push(authorization);
    let mut request_body = vec![0; length];
    if reader.read_exact(&mut request_body).is_err() {
        return;
    }
    let mut tls = reader.into_inner();
    let _ = write!(
        tls,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
