//! The HTTP endpoint at `[agent] listen`: `/healthz`, `/readyz` and `/metrics`. It reads the
//! published status and metrics only; it never changes anything.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::supervisor::Status;

/// What the endpoint reads to answer.
#[derive(Clone)]
pub struct Observed {
    pub status: watch::Receiver<Status>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
}

/// Serves on `listener` until the task is aborted; one task per connection, all tracked.
pub async fn serve(listener: TcpListener, observed: Observed) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let observed = observed.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let observed = observed.clone();
                        async move { Ok::<_, Infallible>(answer(&request, &observed)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(error) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        debug!(%error, "http connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn answer(request: &Request<Incoming>, observed: &Observed) -> Response<Full<Bytes>> {
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
            let unready = status.unready(observed.clock.now());
            if unready.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else {
                let names: Vec<&str> = unready.iter().map(|name| name.as_str()).collect();
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("no valid token on disk for: {}\n", names.join(", ")),
                )
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
