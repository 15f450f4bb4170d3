//! The metrics export's temporality: cumulative, or delta for the backends that want it.
//!
//! The sidecar keeps its metrics cumulative (what `/metrics` serves) and builds every metrics
//! export from them. With a delta preference, [`Deltas`] turns the export's cumulative points
//! into what changed since the previous export, as an OpenTelemetry SDK does under
//! `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`:
//!
//! - `delta`: counters (monotonic sums, the CPU time among them) and histograms are sent as
//!   deltas; up-down counters (requests in flight, memory) stay cumulative;
//! - `lowmemory`: the same, except the CPU time, which the sidecar reads from its process
//!   as an SDK's asynchronous counter does: it stays cumulative.
//!
//! A series that did not change since the previous export is left out, as an SDK leaves out
//! an attribute set nothing was recorded for; the CPU time is sent every time. A delta point
//! starts where the previous export of its series ended (a new series: where its cumulative
//! count started). Deltas are not re-sent: an export dropped after its retries loses its
//! interval, which cumulative export would have recovered with the next one.

use std::collections::HashMap;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::KeyValue,
    metrics::v1::{AggregationTemporality, HistogramDataPoint, Metric, NumberDataPoint, metric::Data, number_data_point},
};
use prost::Message;
use serde::Deserialize;

/// Which temporality the metrics export uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// Every point counts since its series started.
    #[default]
    Cumulative,
    /// Counters and histograms count since the previous export.
    Delta,
    /// Counters recorded as requests pass, and histograms, count since the previous export;
    /// the CPU time stays cumulative.
    LowMemory,
}

impl Temporality {
    /// The name the settings use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cumulative => "cumulative",
            Self::Delta => "delta",
            Self::LowMemory => "lowmemory",
        }
    }
}

/// The metric read from the process rather than recorded as requests pass: an asynchronous
/// counter in OpenTelemetry's terms.
const OBSERVED_COUNTER: &str = "process.cpu.time";

/// What a series counted at the previous export.
#[derive(Debug, Clone, PartialEq)]
enum Counted {
    Int(i64),
    Double(f64),
    Histogram { count: u64, sum: f64, buckets: Vec<u64> },
}

/// A series: its metric's name and its attributes, encoded.
type SeriesKey = (String, Vec<u8>);

/// Turns cumulative metrics exports into deltas, remembering what each series counted.
#[derive(Debug)]
pub struct Deltas {
    temporality: Temporality,
    previous: HashMap<SeriesKey, (Counted, u64)>,
}

impl Deltas {
    /// The converter for `temporality`; `None` for cumulative, which needs none.
    pub fn new(temporality: Temporality) -> Option<Self> {
        (temporality != Temporality::Cumulative).then(|| Self { temporality, previous: HashMap::new() })
    }

    /// Rewrites the cumulative `request` as deltas where the preference says so.
    pub fn apply(&mut self, request: &mut ExportMetricsServiceRequest) {
        let mut seen = HashMap::with_capacity(self.previous.len());
        for scope in request.resource_metrics.iter_mut().flat_map(|r| &mut r.scope_metrics) {
            for metric in &mut scope.metrics {
                self.apply_to(metric, &mut seen);
            }
            // A metric none of whose series changed is left out whole.
            scope.metrics.retain(|metric| match &metric.data {
                Some(Data::Sum(sum)) => !sum.data_points.is_empty(),
                Some(Data::Histogram(histogram)) => !histogram.data_points.is_empty(),
                _ => true,
            });
        }
        // Series no longer exported are forgotten.
        self.previous = seen;
    }

    fn apply_to(&self, metric: &mut Metric, seen: &mut HashMap<SeriesKey, (Counted, u64)>) {
        let observed = metric.name == OBSERVED_COUNTER;
        if observed && self.temporality == Temporality::LowMemory {
            return;
        }
        let delta = AggregationTemporality::Delta as i32;
        match &mut metric.data {
            Some(Data::Sum(sum)) if sum.is_monotonic && sum.aggregation_temporality != delta => {
                sum.aggregation_temporality = delta;
                sum.data_points.retain_mut(|point| {
                    let key = (metric.name.clone(), encoded(&point.attributes));
                    let changed = self.number(key, point, seen);
                    changed || observed
                });
            }
            Some(Data::Histogram(histogram)) if histogram.aggregation_temporality != delta => {
                histogram.aggregation_temporality = delta;
                histogram.data_points.retain_mut(|point| {
                    let key = (metric.name.clone(), encoded(&point.attributes));
                    self.histogram(key, point, seen)
                });
            }
            _ => {}
        }
    }

    /// Makes `point` a delta; whether it changed.
    fn number(&self, key: SeriesKey, point: &mut NumberDataPoint, seen: &mut HashMap<SeriesKey, (Counted, u64)>) -> bool {
        let now = match point.value {
            Some(number_data_point::Value::AsInt(v)) => Counted::Int(v),
            Some(number_data_point::Value::AsDouble(v)) => Counted::Double(v),
            None => return false,
        };
        let before = self.since(&key, &mut point.start_time_unix_nano).map(|(counted, _)| counted);
        let (value, changed) = match (&now, before) {
            (Counted::Int(now), Some(Counted::Int(before))) if now >= before => (number_data_point::Value::AsInt(now - before), now != before),
            (Counted::Double(now), Some(Counted::Double(before))) if now >= before => {
                (number_data_point::Value::AsDouble(now - before), now != before)
            }
            // New, or reset: all of it is new.
            (Counted::Int(now), _) => (number_data_point::Value::AsInt(*now), true),
            (Counted::Double(now), _) => (number_data_point::Value::AsDouble(*now), true),
            (Counted::Histogram { .. }, _) => return false,
        };
        point.value = Some(value);
        seen.insert(key, (now, point.time_unix_nano));
        changed
    }

    /// Makes `point` a delta; whether anything was recorded since the previous export.
    fn histogram(&self, key: SeriesKey, point: &mut HistogramDataPoint, seen: &mut HashMap<SeriesKey, (Counted, u64)>) -> bool {
        let now = Counted::Histogram { count: point.count, sum: point.sum.unwrap_or(0.0), buckets: point.bucket_counts.clone() };
        let changed = match self.since(&key, &mut point.start_time_unix_nano) {
            Some((Counted::Histogram { count, sum, buckets }, previous_end))
                if point.count >= *count && buckets.len() == point.bucket_counts.len()
                    && point.bucket_counts.iter().zip(buckets).all(|(now, before)| now >= before) =>
            {
                point.count -= count;
                point.sum = point.sum.map(|now| now - sum);
                point.bucket_counts.iter_mut().zip(buckets).for_each(|(now, before)| *now -= before);
                // Exemplars of earlier intervals were sent with them.
                point.exemplars.retain(|e| e.time_unix_nano > previous_end);
                point.count > 0
            }
            _ => true,
        };
        seen.insert(key, (now, point.time_unix_nano));
        changed
    }

    /// What the series counted at the previous export, and that export's time, if it was
    /// exported; `start` then becomes that time (it stays the series' start for a new one).
    fn since(&self, key: &SeriesKey, start: &mut u64) -> Option<(&Counted, u64)> {
        let (counted, end) = self.previous.get(key)?;
        *start = (*end).max(*start);
        Some((counted, *end))
    }
}

/// Attributes as bytes, to key a series by.
fn encoded(attributes: &[KeyValue]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for kv in attributes {
        kv.encode_length_delimited(&mut bytes).unwrap_or_default();
    }
    bytes
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        common::v1::{AnyValue, any_value},
        metrics::v1::{Exemplar, Histogram, ResourceMetrics, ScopeMetrics, Sum},
    };

    use super::*;

    fn attributes(value: &str) -> Vec<KeyValue> {
        vec![KeyValue { key: "k".into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }), ..Default::default() }]
    }

    fn sum(name: &str, monotonic: bool, points: &[(&str, i64)], time: u64) -> Metric {
        let data_points = points
            .iter()
            .map(|(k, v)| NumberDataPoint {
                attributes: attributes(k),
                start_time_unix_nano: 100,
                time_unix_nano: time,
                value: Some(number_data_point::Value::AsInt(*v)),
                ..Default::default()
            })
            .collect();
        let aggregation_temporality = AggregationTemporality::Cumulative as i32;
        Metric { name: name.into(), data: Some(Data::Sum(Sum { data_points, aggregation_temporality, is_monotonic: monotonic })), ..Default::default() }
    }

    fn histogram(buckets: [u64; 3], sum: f64, exemplar_times: &[u64], time: u64) -> Metric {
        let point = HistogramDataPoint {
            attributes: attributes("a"),
            start_time_unix_nano: 100,
            time_unix_nano: time,
            count: buckets.iter().sum(),
            sum: Some(sum),
            bucket_counts: buckets.to_vec(),
            explicit_bounds: vec![0.1, 1.0],
            exemplars: exemplar_times.iter().map(|t| Exemplar { time_unix_nano: *t, ..Default::default() }).collect(),
            ..Default::default()
        };
        let aggregation_temporality = AggregationTemporality::Cumulative as i32;
        Metric { name: "h".into(), data: Some(Data::Histogram(Histogram { data_points: vec![point], aggregation_temporality })), ..Default::default() }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics { scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }], ..Default::default() }],
        }
    }

    fn metrics(request: &ExportMetricsServiceRequest) -> &[Metric] {
        &request.resource_metrics[0].scope_metrics[0].metrics
    }

    /// (start, time, value) of each point of a sum, and whether it is a delta.
    fn sum_points(metric: &Metric) -> (bool, Vec<(u64, u64, i64)>) {
        let Some(Data::Sum(sum)) = &metric.data else { panic!("a sum") };
        let points = sum
            .data_points
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(v)) => (p.start_time_unix_nano, p.time_unix_nano, v),
                _ => panic!("an integer"),
            })
            .collect();
        (sum.aggregation_temporality == AggregationTemporality::Delta as i32, points)
    }

    #[test]
    fn counters_become_what_changed_since_the_last_export_and_unchanged_series_are_left_out() {
        let mut deltas = Deltas::new(Temporality::Delta).expect("a converter");
        let mut first = request(vec![sum("c", true, &[("a", 5), ("b", 2)], 1_000), sum("g", false, &[("a", 7)], 1_000)]);
        deltas.apply(&mut first);
        assert_eq!(sum_points(&metrics(&first)[0]), (true, vec![(100, 1_000, 5), (100, 1_000, 2)]), "new series: all of it");
        assert_eq!(sum_points(&metrics(&first)[1]), (false, vec![(100, 1_000, 7)]), "an up-down counter stays cumulative");

        let mut second = request(vec![sum("c", true, &[("a", 9), ("b", 2), ("c", 1)], 2_000), sum("g", false, &[("a", 3)], 2_000)]);
        deltas.apply(&mut second);
        assert_eq!(sum_points(&metrics(&second)[0]), (true, vec![(1_000, 2_000, 4), (100, 2_000, 1)]), "b did not change");
        assert_eq!(sum_points(&metrics(&second)[1]), (false, vec![(100, 2_000, 3)]));

        // A count that went down started again: all of it is new.
        let mut third = request(vec![sum("c", true, &[("a", 4), ("b", 3)], 3_000)]);
        deltas.apply(&mut third);
        assert_eq!(sum_points(&metrics(&third)[0]), (true, vec![(2_000, 3_000, 4), (2_000, 3_000, 1)]));
    }

    #[test]
    fn the_cpu_time_is_a_delta_every_time_under_delta_and_cumulative_under_lowmemory() {
        let mut delta = Deltas::new(Temporality::Delta).expect("a converter");
        let mut low = Deltas::new(Temporality::LowMemory).expect("a converter");
        for (time, counted) in [(1_000, 1), (2_000, 2)] {
            let export = request(vec![sum(OBSERVED_COUNTER, true, &[("user", 3)], time), sum("c", true, &[("a", counted)], time)]);
            let (mut as_delta, mut as_low) = (export.clone(), export);
            delta.apply(&mut as_delta);
            low.apply(&mut as_low);
            let cpu = if time == 1_000 { (100, 1_000, 3) } else { (1_000, 2_000, 0) };
            assert_eq!(sum_points(&metrics(&as_delta)[0]), (true, vec![cpu]), "sent even unchanged");
            assert_eq!(sum_points(&metrics(&as_low)[0]), (false, vec![(100, time, 3)]));
            assert_eq!(sum_points(&metrics(&as_low)[1]).1[0].2, 1, "a counter is a delta under lowmemory");
        }
        assert!(Deltas::new(Temporality::Cumulative).is_none());
    }

    #[test]
    fn histograms_send_the_interval_s_buckets_sum_and_exemplars() {
        let mut deltas = Deltas::new(Temporality::Delta).expect("a converter");
        let mut first = request(vec![histogram([1, 2, 0], 1.5, &[900], 1_000)]);
        deltas.apply(&mut first);
        let mut second = request(vec![histogram([3, 2, 1], 4.0, &[900, 1_500], 2_000)]);
        deltas.apply(&mut second);
        let Some(Data::Histogram(h)) = &metrics(&second)[0].data else { panic!("a histogram") };
        assert_eq!(h.aggregation_temporality, AggregationTemporality::Delta as i32);
        let p = &h.data_points[0];
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano, p.count, p.sum, p.bucket_counts.as_slice()), (1_000, 2_000, 3, Some(2.5), &[2, 0, 1][..]));
        assert_eq!(p.exemplars.iter().map(|e| e.time_unix_nano).collect::<Vec<_>>(), [1_500], "the interval's exemplar only");

        let mut idle = request(vec![histogram([3, 2, 1], 4.0, &[900, 1_500], 3_000)]);
        deltas.apply(&mut idle);
        assert!(metrics(&idle).is_empty(), "nothing recorded, nothing sent");
        let mut later = request(vec![histogram([3, 2, 2], 9.0, &[2_500], 4_000)]);
        deltas.apply(&mut later);
        let Some(Data::Histogram(h)) = &metrics(&later)[0].data else { panic!("a histogram") };
        assert_eq!((h.data_points[0].start_time_unix_nano, h.data_points[0].count), (3_000, 1), "from the export it was left out of");
    }
}
