//! Prometheus metrics: per-client token expiry, refreshes by result, last error time, request
//! duration (sum and count; the buckets across clients), unusable token files, and build info.
//! Updated by the supervisor from worker reports; read by `admin`.
//! Never a secret or a token in a label or a value.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::clock::Clock;
use crate::config::ClientName;

/// Labels hold the client's shared name, not a copy of it (three copies were ~120 bytes a
/// client).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabel {
    client: ClientName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    client: ClientName,
    result: &'static str,
}

impl EncodeLabelValue for ClientName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// How a token request ended: the `result` label of `bearerd_refreshes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestResult {
    Success,
    Failure,
}

impl RequestResult {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// One client's request durations: a histogram with the `+Inf` bucket only, i.e. its sum and
/// count, in 48 bytes (prometheus-client's `Histogram` takes ~260 even without buckets).
#[derive(Clone, Debug, Default)]
struct SumAndCount(Arc<Mutex<(f64, u64)>>);

impl SumAndCount {
    fn observe(&self, value: f64) {
        let mut sum_and_count = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sum_and_count.0 += value;
        sum_and_count.1 += 1;
    }
}

impl TypedMetric for SumAndCount {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SumAndCount {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count) = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        encoder.encode_histogram::<NoLabelSet>(sum, count, &[(f64::INFINITY, count)], None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The process's metrics and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    expiry: Family<ClientLabel, Gauge>,
    refreshes: Family<ResultLabel, Counter>,
    last_error: Family<ClientLabel, Gauge>,
    /// Per client: the sum and count of request durations. The buckets are in
    /// `all_durations`, across clients: a histogram per client was the largest part of the
    /// metrics' memory with 10,000 clients (BENCHMARKS.md).
    durations: Family<ClientLabel, SumAndCount>,
    all_durations: Histogram,
    token_file_unusable: Family<ClientLabel, Gauge>,
    reload_successful: Gauge,
}

fn duration_histogram() -> Histogram {
    // 5 ms … ~10 s: loopback answers in milliseconds, a slow IdP in seconds.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let expiry = Family::<ClientLabel, Gauge>::default();
        let refreshes = Family::<ResultLabel, Counter>::default();
        let last_error = Family::<ClientLabel, Gauge>::default();
        let durations = Family::<ClientLabel, SumAndCount>::default();
        let all_durations = duration_histogram();
        let token_file_unusable = Family::<ClientLabel, Gauge>::default();
        let reload_successful = Gauge::default();
        reload_successful.set(1);
        registry.register(
            "bearerd_token_expiry_timestamp_seconds",
            "When the client's token on disk expires (Unix seconds)",
            expiry.clone(),
        );
        registry.register(
            "bearerd_refreshes",
            "Token requests by result (success or failure)",
            refreshes.clone(),
        );
        registry.register(
            "bearerd_last_error_timestamp_seconds",
            "When the client's last token request failed (Unix seconds)",
            last_error.clone(),
        );
        registry.register(
            "bearerd_request_duration_seconds",
            "How long the client's token requests took (sum and count)",
            durations.clone(),
        );
        registry.register(
            "bearerd_request_duration_all_clients_seconds",
            "How long token requests took, every client's together",
            all_durations.clone(),
        );
        registry.register(
            "bearerd_token_file_unusable",
            "Whether the client's last attempt sent nothing because a token file it reads (a \
             client assertion, subject, actor or jwt_bearer assertion) was unreadable, empty, \
             expired or not yet valid (1), or not (0); only for clients that read token files",
            token_file_unusable.clone(),
        );
        registry.register(
            "bearerd_config_last_reload_successful",
            "Whether the last reload applied its configuration (1), or refused it as invalid (0)",
            reload_successful.clone(),
        );
        registry.register(
            "bearerd_build",
            "bearerd's version",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self {
            registry: Mutex::new(registry),
            expiry,
            refreshes,
            last_error,
            durations,
            all_durations,
            token_file_unusable,
            reload_successful,
        }
    }
}

fn label(client: &ClientName) -> ClientLabel {
    ClientLabel {
        client: client.clone(),
    }
}

fn unix(time: SystemTime) -> i64 {
    i64::try_from(Clock::unix_seconds(time)).unwrap_or(i64::MAX)
}

impl Metrics {
    pub(crate) fn token_written(&self, client: &ClientName, expires_at: SystemTime) {
        self.expiry
            .get_or_create(&label(client))
            .set(unix(expires_at));
    }

    pub(crate) fn request_finished(
        &self,
        client: &ClientName,
        result: RequestResult,
        took: Duration,
    ) {
        self.refreshes
            .get_or_create(&ResultLabel {
                client: client.clone(),
                result: result.label(),
            })
            .inc();
        let seconds = took.as_secs_f64();
        self.durations
            .get_or_create(&label(client))
            .observe(seconds);
        self.all_durations.observe(seconds);
    }

    pub(crate) fn request_failed_at(&self, client: &ClientName, at: SystemTime) {
        self.last_error.get_or_create(&label(client)).set(unix(at));
    }

    /// A client that reads token files: whether its last attempt found them usable.
    pub(crate) fn token_files_checked(&self, client: &ClientName, usable: bool) {
        self.token_file_unusable
            .get_or_create(&label(client))
            .set(i64::from(!usable));
    }

    pub(crate) fn config_reloaded(&self, applied: bool) {
        self.reload_successful.set(i64::from(applied));
    }

    /// Drops a removed client's series so that dashboards do not show a ghost.
    pub(crate) fn forget(&self, client: &ClientName) {
        let client_label = label(client);
        self.expiry.remove(&client_label);
        self.last_error.remove(&client_label);
        self.durations.remove(&client_label);
        self.token_file_unusable.remove(&client_label);
        for result in [RequestResult::Success, RequestResult::Failure] {
            self.refreshes.remove(&ResultLabel {
                client: client.clone(),
                result: result.label(),
            });
        }
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_per_client() {
        let metrics = Metrics::default();
        let client = ClientName::parse("tasklist").expect("name");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        metrics.token_written(&client, at);
        metrics.request_finished(&client, RequestResult::Success, Duration::from_millis(20));
        metrics.request_finished(&client, RequestResult::Failure, Duration::from_millis(30));
        metrics.request_failed_at(&client, at);
        metrics.token_files_checked(&client, false);
        let text = metrics.encode();
        for line in [
            "bearerd_token_expiry_timestamp_seconds{client=\"tasklist\"} 1800000000",
            "bearerd_refreshes_total{client=\"tasklist\",result=\"success\"} 1",
            "bearerd_refreshes_total{client=\"tasklist\",result=\"failure\"} 1",
            "bearerd_last_error_timestamp_seconds{client=\"tasklist\"} 1800000000",
            "bearerd_request_duration_seconds_count{client=\"tasklist\"} 2",
            "bearerd_request_duration_seconds_bucket{le=\"+Inf\",client=\"tasklist\"} 2",
            "bearerd_request_duration_all_clients_seconds_bucket{le=\"0.025\"} 1",
            "bearerd_request_duration_all_clients_seconds_count 2",
            "bearerd_token_file_unusable{client=\"tasklist\"} 1",
            &format!(
                "bearerd_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        metrics.forget(&client);
        assert!(!metrics.encode().contains("tasklist"));
    }
}
