//! The request metrics on the sidecar's admin `/metrics`, for a Prometheus that scrapes the
//! sidecars themselves (as it scrapes Envoy's or Linkerd's proxies).
//!
//! The same series the OTLP export carries, read from the table at each scrape, under the
//! names and labels an OpenTelemetry-to-Prometheus translation gives them:
//! `http_server_request_duration_seconds` (`http.server.request.duration`),
//! `http_client_request_body_size_bytes`, ... with `http_request_method`,
//! `meshlens_destination_service`, ... as labels.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};

use super::{
    Side,
    metrics::{HISTOGRAMS, RequestKey, RequestMetrics, RequestStats},
    otlp,
};

/// The request metrics, encoded at each scrape.
#[derive(Debug)]
pub struct RequestMetricsCollector(pub RequestMetrics);

/// Prometheus labels.
type Labels = Vec<(String, String)>;

impl Collector for RequestMetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        let labelled: Vec<(Side, Labels, &RequestStats)> =
            snapshot.iter().map(|(key, stats)| (key.side, labels(key), stats)).collect();
        for family in &HISTOGRAMS {
            let mut series = labelled
                .iter()
                .filter(|(side, _, _)| *side == family.side)
                .filter_map(|(_, labels, stats)| Some((labels, (family.view)(stats)?)))
                .peekable();
            if series.peek().is_none() {
                continue;
            }
            // `http.client.request.duration` in `s`: `http_client_request_duration_seconds`.
            let name = family.name.replace('.', "_");
            let unit = family.prometheus_unit.map(|unit| Unit::Other(unit.into()));
            let mut metric = encoder.encode_descriptor(&name, family.description, unit.as_ref(), MetricType::Histogram)?;
            for (labels, view) in series {
                let buckets: Vec<(f64, u64)> =
                    view.bounds.iter().copied().chain([f64::INFINITY]).zip(view.buckets.iter().copied()).collect();
                metric.encode_family(labels)?.encode_histogram::<NoLabelSet>(view.sum, view.buckets.iter().sum(), &buckets, None)?;
            }
        }
        Ok(())
    }
}

/// The series' OTLP attributes as Prometheus labels: dots become underscores.
fn labels(key: &RequestKey) -> Labels {
    otlp::key_attributes(key)
        .into_iter()
        .filter_map(|kv| {
            let value = match kv.value?.value? {
                Value::StringValue(s) => s,
                Value::IntValue(i) => i.to_string(),
                _ => return None,
            };
            Some((kv.key.replace('.', "_"), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{
        classify::Outcome,
        telemetry::{metrics::LabelPolicy, stats::TelemetryStats, tests::record},
    };

    #[test]
    fn the_request_metrics_read_as_prometheus_histograms_under_translated_names() {
        let metrics = RequestMetrics::new(LabelPolicy::default(), TelemetryStats::default());
        let mut client = record(true, Outcome::Success, 3);
        client.status = 503;
        client.destination_service = "reviews".into();
        client.response_bytes = 2_500;
        metrics.observe(&client, false);
        metrics.observe(&client, false);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(RequestMetricsCollector(metrics)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");

        assert!(text.contains("# TYPE http_client_request_duration_seconds histogram\n"), "{text}");
        assert!(text.contains("# UNIT http_client_response_body_size_bytes bytes\n"), "{text}");
        assert!(!text.contains("http_server_"), "no inbound series, no inbound families: {text}");
        let line = |prefix: &str, le: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix) && l.contains(&format!("le=\"{le}\"")))
                .unwrap_or_else(|| panic!("{prefix} le={le} in {text}"))
                .to_owned()
        };
        // Cumulative buckets: both 3 ms requests are at or under 0.005 s, none under 0.0025 s.
        assert!(line("http_client_request_duration_seconds_bucket{", "0.0025").ends_with(" 0"));
        assert!(line("http_client_request_duration_seconds_bucket{", "0.005").ends_with(" 2"));
        assert!(line("http_client_request_duration_seconds_bucket{", "+Inf").ends_with(" 2"));
        assert!(line("http_client_response_body_size_bytes_bucket{", "1000.0").ends_with(" 0"));
        assert!(line("http_client_response_body_size_bytes_bucket{", "10000.0").ends_with(" 2"));
        let sum = text.lines().find(|l| l.starts_with("http_client_response_body_size_bytes_sum{")).expect("sum");
        assert!(sum.ends_with(" 5000.0"), "{sum}");
        // The OTLP attributes, dots as underscores.
        for label in ["http_response_status_code=\"503\"", "meshlens_destination_service=\"reviews\"", "meshlens_direction=\"outbound\""] {
            assert!(sum.contains(label), "{label} in {sum}");
        }
    }
}
