//! The `[agent]` section: the settings every client shares, checked into an [`Agent`].
//! It knows nothing of clients.

use std::net::SocketAddr;

use toml::de::DeTable;

use super::{Checker, Span};
use crate::config::{Agent, LogFormat};

const AGENT_KEYS: &[&str] = &[
    "refresh_at",
    "listen",
    "log_format",
    "http_timeout",
    "max_concurrent_requests",
    "max_requests_per_second",
    "default_lifetime",
    "backoff_min",
    "backoff_max",
    "state_dir",
];

/// The bounds of `max_requests_per_second`: one request every 1,000 s at least (slower would
/// starve a client for longer than most tokens live), and no more than a limit can mean.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 10_000.0;

impl Checker<'_> {
    pub(super) fn agent(&mut self, table: &DeTable<'_>, span: Span) -> Option<Agent> {
        self.unknown_keys(table, "agent", AGENT_KEYS);
        let errors_before = self.diagnostics.len();
        let mut agent = Agent::default();
        if let Some((value, span)) = self.float(table, "agent", "refresh_at") {
            if value > 0.0 && value < 1.0 {
                agent.refresh_at = value;
            } else {
                self.error(
                    &span,
                    "agent.refresh_at",
                    format!("expected a fraction between 0 and 1 (exclusive), found {value}"),
                );
            }
        }
        if let Some((text, span)) = self.string(table, "agent", "listen") {
            match text.parse::<SocketAddr>() {
                Ok(address) => agent.listen = Some(address),
                Err(_) => self.error(
                    &span,
                    "agent.listen",
                    format!(
                        "expected an address and port such as \"127.0.0.1:9161\", found {text:?}"
                    ),
                ),
            }
        }
        if let Some((text, span)) = self.string(table, "agent", "log_format") {
            match text.as_str() {
                "text" => agent.log_format = LogFormat::Text,
                "json" => agent.log_format = LogFormat::Json,
                _ => self.error(
                    &span,
                    "agent.log_format",
                    format!("expected \"text\" or \"json\", found {text:?}"),
                ),
            }
        }
        if let Some(value) = self.duration(table, "agent", "http_timeout") {
            agent.http_timeout = value;
        }
        if let Some((value, span)) = self.integer(table, "agent", "max_concurrent_requests") {
            match usize::try_from(value) {
                Ok(count) if (1..=10_000).contains(&count) => agent.max_concurrent_requests = count,
                _ => self.error(
                    &span,
                    "agent.max_concurrent_requests",
                    format!("expected a whole number from 1 to 10000, found {value}"),
                ),
            }
        }
        if let Some((value, span)) = self.float(table, "agent", "max_requests_per_second") {
            if (MIN_RATE..=MAX_RATE).contains(&value) {
                agent.max_requests_per_second = Some(value);
            } else {
                self.error(
                    &span,
                    "agent.max_requests_per_second",
                    format!(
                        "expected a number of requests per second from {MIN_RATE} to {MAX_RATE} \
                         (0.5 is one request every 2 seconds), found {value}"
                    ),
                );
            }
        }
        if let Some(value) = self.duration(table, "agent", "default_lifetime") {
            agent.default_lifetime = value;
        }
        if let Some(value) = self.duration(table, "agent", "backoff_min") {
            agent.backoff_min = value;
        }
        if let Some(value) = self.duration(table, "agent", "backoff_max") {
            agent.backoff_max = value;
        }
        if agent.backoff_min > agent.backoff_max {
            self.error(
                &span,
                "agent.backoff_max",
                "expected backoff_max to be at least backoff_min",
            );
        }
        if let Some((text, _)) = self.string(table, "agent", "state_dir") {
            agent.state_dir = Some(self.resolve(&text));
        }
        (self.diagnostics.len() == errors_before).then_some(agent)
    }
}
