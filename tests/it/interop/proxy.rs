//! bearerd behind an HTTP proxy: the `proxy` key, `HTTP_PROXY`/`HTTPS_PROXY` and `NO_PROXY`,
//! checked with a tiny forwarding proxy on loopback that records each connection's first line
//! (an absolute-form request for `http`, a `CONNECT` for `https`).

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bearerd_idp::IdpSettings;
use serde_json::json;

use super::{bearerd, client, succeed};
use crate::harness::{Client, Config, Harness, TestIdp, pki};
use crate::oidc::jwt_claims;

/// A forwarding HTTP proxy on `127.0.0.1`: `CONNECT host:port` opens a tunnel, an absolute-form
/// request is passed on in origin form. Each connection's first line is recorded.
struct Proxy {
    url: String,
    address: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (record, stopped) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let record = Arc::clone(&record);
                std::thread::spawn(move || serve(stream, &record));
            }
        });
        Proxy {
            url: format!("http://{address}"),
            address,
            seen,
            stop,
        }
    }

    /// The first line of every connection so far.
    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.address);
    }
}

/// One client connection: read the head, connect upstream, then copy bytes both ways.
fn serve(client: TcpStream, seen: &Mutex<Vec<String>>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(client.try_clone().expect("clone the stream"));
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let end = line == "\r\n";
        head.push(line);
        if end {
            break;
        }
    }
    let request_line = head[0].trim_end().to_owned();
    seen.lock().expect("seen").push(request_line.clone());
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let mut client = client;
    let upstream = if method == "CONNECT" {
        let Ok(upstream) = TcpStream::connect(target) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
            return;
        };
        let _ = client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n");
        upstream
    } else {
        // http://host:port/path → connect to host:port, send "METHOD /path VERSION".
        let Some(rest) = target.strip_prefix("http://") else {
            return;
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let Ok(mut upstream) = TcpStream::connect(authority) else {
            return;
        };
        let path = if path.is_empty() { "/" } else { path };
        let mut forwarded = format!("{method} {path} {version}\r\n");
        for line in &head[1..] {
            forwarded.push_str(line);
        }
        if upstream.write_all(forwarded.as_bytes()).is_err() {
            return;
        }
        upstream
    };
    // Whatever the reader buffered past the head belongs to the upstream.
    let buffered = reader.buffer().to_vec();
    let mut to_upstream = upstream.try_clone().expect("clone the upstream");
    if to_upstream.write_all(&buffered).is_err() {
        return;
    }
    let mut from_upstream = upstream;
    let mut to_client = client.try_clone().expect("clone the client");
    let mut from_client = reader.into_inner();
    let _ = from_client.set_read_timeout(None);
    let pump = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_upstream);
        let _ = to_upstream.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut from_upstream, &mut to_client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = pump.join();
}

/// One `client_secret_basic` client, `api-bot`, against `token_url`.
fn api(token_url: &str) -> Client {
    client("api")
        .token_url(token_url)
        .client_id("api-bot")
        .secret("api-secret")
}

#[test]
fn the_proxy_key_sends_the_token_request_through_the_proxy_even_to_loopback() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("api-bot", "api-secret", Duration::from_secs(300));
    let proxy = Proxy::start();
    let harness = Harness::new();
    let config =
        harness.write_config(&Config::new().client(api(&idp.token_url()).set("proxy", &proxy.url)));
    // An explicit `proxy` replaces the environment's settings, NO_PROXY included.
    let mut command = bearerd(&harness, &config, &["run", "--once"]);
    command.env("NO_PROXY", "127.0.0.1,localhost");
    succeed(command, String::new);

    assert_eq!(
        proxy.seen(),
        vec![format!("POST {} HTTP/1.1", idp.token_url())],
        "the proxy saw an absolute-form request"
    );
    assert_eq!(idp.token_request_count(), 1);
    assert!(!harness.read("api.token").is_empty());
}

#[test]
fn http_proxy_from_the_environment_applies_to_loopback_unless_no_proxy_names_it() {
    let idp = TestIdp::start(IdpSettings::default());
    idp.add_client("api-bot", "api-secret", Duration::from_secs(300));
    let proxy = Proxy::start();
    let harness = Harness::new();
    let config = harness.write_config(&Config::new().client(api(&idp.token_url())));

    let mut command = bearerd(&harness, &config, &["token", "api"]);
    command.env("HTTP_PROXY", &proxy.url);
    succeed(command, String::new);
    assert_eq!(
        proxy.seen(),
        vec![format!("POST {} HTTP/1.1", idp.token_url())]
    );

    let mut command = bearerd(&harness, &config, &["token", "api"]);
    command
        .env("HTTP_PROXY", &proxy.url)
        .env("NO_PROXY", "127.0.0.1");
    succeed(command, String::new);
    assert_eq!(proxy.seen().len(), 1, "NO_PROXY bypassed the proxy");
    assert_eq!(idp.token_request_count(), 2);
}

#[test]
fn https_proxy_tunnels_to_an_https_token_endpoint_with_connect() {
    let harness = Harness::new();
    let pki = pki::Pki::create(harness.dir.path());
    let idp = super::tls_provider(
        &pki,
        json!([{"client_id": "api-bot", "client_secret": "api-secret",
                "token_endpoint_auth_method": "client_secret_basic"}]),
    );
    let proxy = Proxy::start();
    let config = harness.write_config(
        &Config::new().client(
            api(&idp.token_endpoint)
                .ca_file(&pki.ca_cert)
                .extra_params(&[("resource", "https://api.example.com")]),
        ),
    );
    let mut command = bearerd(&harness, &config, &["token", "api"]);
    command.env("HTTPS_PROXY", &proxy.url);
    let token = succeed(command, || idp.log());

    let authority = idp
        .issuer
        .strip_prefix("https://")
        .expect("an https issuer");
    assert_eq!(proxy.seen(), vec![format!("CONNECT {authority} HTTP/1.1")]);
    // TLS went end to end through the tunnel: the token is the server's own.
    assert_eq!(jwt_claims(&token)["client_id"], "api-bot");
}
