//! The admin endpoint at `[agent] listen`: `/healthz`, `/readyz` and `/metrics` over HTTP/1.1,
//! with bounded connections and timeouts. It reads the published status and metrics only; it
//! never changes anything.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{self, AbortHandle, JoinError, JoinSet};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::supervisor::Status;

/// What the endpoint reads to respond.
#[derive(Clone)]
pub(crate) struct Observed {
    pub(crate) status: watch::Receiver<Status>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Clock,
}

/// Connections open at once, at most. Probes and scrapers need a handful; a fixed 64 keeps the
/// endpoint's share of descriptors small even under the systemd default soft limit of 1,024,
/// so that token requests, file writes and reloads always find descriptors free.
pub const MAX_CONNECTIONS: usize = 64;

/// A request's headers must arrive within this. hyper also runs it while a kept-alive
/// connection waits for its next request, so it is the idle timeout too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// No connection lives longer, whatever it does (a client that never reads its response).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves on `listener` until the task is aborted; one task per connection, all tracked.
///
/// At [`MAX_CONNECTIONS`], a new connection closes the oldest one. Closing the newest instead
/// would let anyone who holds 64 half-sent requests lock the kubelet's probes out; this way a
/// client that sends its request at once is served, while slow ones make room. An accept
/// error (out of descriptors, buffers) backs off instead of spinning.
pub(crate) async fn serve(listener: TcpListener, observed: Observed) {
    let mut connections = JoinSet::new();
    // Open connections, oldest first.
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    let mut backoff: Option<Duration> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if backoff.take().is_some() {
                        info!("the admin endpoint accepts connections again");
                    }
                    while let Some(joined) = connections.try_join_next_with_id() {
                        forget(&mut open, joined);
                    }
                    if open.len() >= MAX_CONNECTIONS
                        && let Some(oldest) = open.pop_front()
                    {
                        oldest.abort();
                    }
                    open.push_back(connections.spawn(connection(stream, observed.clone())));
                    // Let the new connection read and respond before the next accept, so that a
                    // flood cannot push a prober's connection out before it was served.
                    tokio::task::yield_now().await;
                }
                Err(error) => {
                    let delay = match backoff {
                        None => {
                            warn!(%error, "the admin endpoint cannot accept connections; backing off");
                            ACCEPT_BACKOFF_MIN
                        }
                        Some(delay) => (delay * 2).min(ACCEPT_BACKOFF_MAX),
                    };
                    backoff = Some(delay);
                    observed.clock.sleep(delay).await;
                }
            },
            Some(joined) = connections.join_next_with_id(), if !connections.is_empty() => {
                forget(&mut open, joined);
            }
        }
    }
}

fn forget(open: &mut VecDeque<AbortHandle>, joined: Result<(task::Id, ()), JoinError>) {
    let id = match joined {
        Ok((id, ())) => id,
        Err(error) => error.id(),
    };
    open.retain(|handle| handle.id() != id);
}

/// One connection: HTTP/1.1 with a header-read timeout, within [`CONNECTION_LIFETIME`].
async fn connection(stream: TcpStream, observed: Observed) {
    let service = hyper::service::service_fn(move |request| {
        let observed = observed.clone();
        async move { Ok::<_, Infallible>(respond(&request, &observed)) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    match tokio::time::timeout(CONNECTION_LIFETIME, builder.serve_connection(io, service)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!(%error, "http connection ended"),
        Err(_) => debug!("http connection closed: open longer than {CONNECTION_LIFETIME:?}"),
    }
}

fn respond(request: &Request<Incoming>, observed: &Observed) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let status = observed.status.borrow();
            let now = observed.clock.now();
            if status.ready(now) {
                reply(StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else {
                let unready = status.unready(now);
                let names: Vec<&str> = unready.iter().map(|name| name.as_str()).collect();
                let mut body = format!("no valid token on disk for: {}\n", names.join(", "));
                // A token file names its path and why it was not sent: the fix is on this
                // machine (the kubelet, a SPIFFE agent), so say where to look.
                for name in &unready {
                    if let Some(problem) = status.token_file_problem(name) {
                        body.push_str(&format!("{name}: {problem}\n"));
                    }
                }
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            observed.metrics.encode(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".to_owned(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
