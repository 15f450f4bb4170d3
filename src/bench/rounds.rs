//! Repeated rounds of `bench proxy`: each row's median over the rounds, and the sidecar's
//! targets judged round by round, each against the references measured in the same round.
//!
//! This machine's speed drifts by a quarter within a minute, so a ratio of two rows of one
//! round (telemetry on against nginx) says more than either figure, and a target met in one
//! round of five is not met.

use serde::Serialize;
use serde_json::Value;

use super::{MIB, Row};

/// What a row measures, to find a round's references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client straight to the upstream.
    Direct,
    /// nginx as a reverse proxy.
    Nginx,
    /// The sidecar with telemetry off.
    TelemetryOff,
    /// The sidecar exporting to a running collector.
    TelemetryOn,
    /// The sidecar exporting to the null receiver.
    NullReceiver,
    /// The sidecar exporting to an address nobody listens on.
    CollectorDown,
}

/// Counts of what went wrong, shown at their largest over the rounds rather than their median,
/// so that a round that failed requests or dropped telemetry is not hidden.
const WORST_OF: [&str; 2] = ["errors", "telemetry_dropped"];

/// Each row's median over the rounds: every number is the median of that field's values
/// (rounds that have none left out; the largest for [`WORST_OF`]), the scenario name that of
/// the first round.
pub fn medians(rounds: &[Vec<Row>]) -> anyhow::Result<Vec<Row>> {
    let Some(first) = rounds.first() else { return Ok(Vec::new()) };
    let mut rows = Vec::with_capacity(first.len());
    for (i, row) in first.iter().enumerate() {
        let mut median = serde_json::to_value(row)?;
        let samples: Vec<Value> = rounds.iter().filter_map(|round| round.get(i)).map(serde_json::to_value).collect::<Result<_, _>>()?;
        if let Value::Object(fields) = &mut median {
            for (name, value) in fields.iter_mut() {
                let values = samples.iter().filter_map(|s| s.get(name));
                let summary = if WORST_OF.contains(&name.as_str()) {
                    values.filter(|v| v.is_number()).max_by(|a, b| a.as_f64().unwrap_or(0.0).total_cmp(&b.as_f64().unwrap_or(0.0))).cloned()
                } else {
                    median_of(values)
                };
                if let Some(m) = summary {
                    *value = m;
                }
            }
        }
        rows.push(serde_json::from_value(median)?);
    }
    Ok(rows)
}

/// The median of the numbers among `values` (integers stay integers: the lower median),
/// `None` when there are none.
fn median_of<'a>(values: impl Iterator<Item = &'a Value>) -> Option<Value> {
    let values: Vec<&Value> = values.filter(|v| v.is_number()).collect();
    if values.is_empty() {
        return None;
    }
    if let Some(mut ints) = values.iter().map(|v| v.as_u64()).collect::<Option<Vec<u64>>>() {
        ints.sort_unstable();
        return Some(Value::from(ints[(ints.len() - 1) / 2]));
    }
    let mut floats: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
    Some(Value::from(median(&mut floats)?))
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One target, judged in every round that has the rows it needs.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// What is measured, and what against.
    pub target: &'static str,
    /// The unit of the figures.
    pub unit: &'static str,
    /// The limit.
    pub limit: f64,
    /// Whether the figure must be at least (`true`) or at most the limit.
    pub at_least: bool,
    /// The figure of each round.
    pub rounds: Vec<f64>,
    /// Rounds in which the target was met.
    pub met: usize,
}

impl Verdict {
    /// The median of the rounds' figures.
    pub fn median(&self) -> Option<f64> {
        median(&mut self.rounds.clone())
    }

    /// The lowest and the highest figure.
    pub fn range(&self) -> Option<(f64, f64)> {
        let min = self.rounds.iter().copied().reduce(f64::min)?;
        Some((min, self.rounds.iter().copied().fold(min, f64::max)))
    }
}

/// A figure of one round, from its rows by kind; `None` where a row or a field is missing.
type Figure = fn(&dyn Fn(Kind) -> Option<Row>) -> Option<f64>;

/// The targets for the sidecar with telemetry on at 100 % sampling and one worker
/// thread, plus the same two throughput ratios to the null receiver (the sidecar's own
/// telemetry cost, without a collector on the same cores) and whether every record reached
/// the collector (otherwise the row's figures are not those of 100 % telemetry). The second
/// figure is the first's ceiling on this machine: the two rows' rates with every core busy,
/// at the CPU per request each makes the whole machine spend (the collector's included), so
/// what scheduling could win back is the distance between the two.
const TARGETS: [(&str, &str, f64, bool, Figure); 11] = [
    ("throughput, telemetry on / nginx", "%", 100.0, true, |row| Some(100.0 * row(Kind::TelemetryOn)?.max_rps / row(Kind::Nginx)?.max_rps)),
    ("ceiling: telemetry on / nginx, every core busy", "%", 100.0, true, |row| {
        Some(100.0 * row(Kind::Nginx)?.machine_cpu_us_per_request? / row(Kind::TelemetryOn)?.machine_cpu_us_per_request?)
    }),
    ("throughput lost to telemetry (on vs off)", "%", 5.0, false, |row| {
        Some(100.0 * (1.0 - row(Kind::TelemetryOn)?.max_rps / row(Kind::TelemetryOff)?.max_rps))
    }),
    ("added latency p50, telemetry on", "µs", 100.0, false, |row| row(Kind::TelemetryOn)?.added_p50_us),
    ("added latency p99, telemetry on", "µs", 200.0, false, |row| row(Kind::TelemetryOn)?.added_p99_us),
    ("CPU per 1,000 requests, telemetry on", "s", 0.060, false, |row| row(Kind::TelemetryOn)?.cpu_s_per_1k_requests),
    ("RSS under load, telemetry on", "MB", 20.0, false, |row| Some(row(Kind::TelemetryOn)?.rss_load_mib? * MIB / 1e6)),
    ("RSS idle, telemetry on", "MB", 20.0, false, |row| Some(row(Kind::TelemetryOn)?.rss_idle_mib? * MIB / 1e6)),
    ("records delivered, telemetry on", "%", 100.0, true, |row| {
        let on = row(Kind::TelemetryOn)?;
        let (made, sent) = (on.telemetry_records?, on.telemetry_exported?);
        Some(if made == 0 { 100.0 } else { 100.0 * sent as f64 / made as f64 })
    }),
    ("throughput, null receiver / nginx", "%", 100.0, true, |row| {
        Some(100.0 * row(Kind::NullReceiver)?.max_rps / row(Kind::Nginx)?.max_rps)
    }),
    ("throughput lost to telemetry (null receiver vs off)", "%", 5.0, false, |row| {
        Some(100.0 * (1.0 - row(Kind::NullReceiver)?.max_rps / row(Kind::TelemetryOff)?.max_rps))
    }),
];

/// Judges every target in every round; `kinds` names the rows of each round, in order.
pub fn verdicts(kinds: &[Kind], rounds: &[Vec<Row>]) -> Vec<Verdict> {
    TARGETS
        .iter()
        .map(|&(target, unit, limit, at_least, figure)| {
            let figures: Vec<f64> = rounds
                .iter()
                .filter_map(|round| {
                    let row = |kind: Kind| kinds.iter().position(|k| *k == kind).and_then(|i| round.get(i)).cloned();
                    figure(&row).filter(|f| f.is_finite())
                })
                .collect();
            let met = figures.iter().filter(|&&f| if at_least { f >= limit } else { f <= limit }).count();
            Verdict { target, unit, limit, at_least, rounds: figures, met }
        })
        .filter(|v| !v.rounds.is_empty())
        .collect()
}

/// Prints the verdicts as a table.
pub fn print_verdicts(verdicts: &[Verdict], rounds: usize) {
    let digits = |unit: &str| if unit == "s" { 3 } else { 1 };
    println!("\nagainst the targets (telemetry on at 100 %, one worker thread), round by round over {rounds} round(s):\n");
    println!("{:<54} {:>12} {:>12} {:>21} {:>10}", "figure", "target", "median", "range", "met in");
    for v in verdicts {
        let d = digits(v.unit);
        let limit = format!("{} {:.d$} {}", if v.at_least { "≥" } else { "≤" }, v.limit, v.unit);
        let median = v.median().map_or_else(|| "-".to_owned(), |m| format!("{m:.d$} {}", v.unit));
        let range = v.range().map_or_else(|| "-".to_owned(), |(lo, hi)| format!("{lo:.d$} – {hi:.d$} {}", v.unit));
        println!("{:<54} {:>12} {:>12} {:>21} {:>10}", v.target, limit, median, range, format!("{} of {}", v.met, v.rounds.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(max_rps: f64, p99: Option<f64>, errors: u64) -> Row {
        let mut row: Row = serde_json::from_value(serde_json::json!({
            "scenario": "s", "max_rps": max_rps, "p50_us": 1.0, "p99_us": 2.0, "p999_us": 3.0, "errors": errors,
        }))
        .expect("a row");
        row.added_p99_us = p99;
        row
    }

    #[test]
    fn medians_take_each_field_over_the_rounds_that_have_it() {
        let mut rounds =
            vec![vec![row(10.0, Some(5.0), 1)], vec![row(30.0, None, 7)], vec![row(20.0, Some(9.0), 3)], vec![row(40.0, None, 4)]];
        for (round, records) in rounds.iter_mut().zip([10, 30, 20, 40]) {
            round[0].telemetry_records = Some(records);
        }
        let m = medians(&rounds).expect("medians");
        assert_eq!(m[0].telemetry_records, Some(20), "integers: the lower median");
        assert_eq!(m[0].max_rps, 25.0, "the mean of the middle two");
        assert_eq!(m[0].added_p99_us, Some(7.0), "rounds without the figure left out");
        assert_eq!(m[0].errors, 7, "errors: the largest, not hidden by the median");
        assert_eq!(m[0].p999_us, 3.0);
        assert_eq!(m[0].proxy_busy_at_max, None);
    }

    #[test]
    fn targets_are_judged_within_each_round() {
        let kinds = [Kind::Nginx, Kind::TelemetryOff, Kind::TelemetryOn];
        // Round one: on beats nginx; round two: nginx is twice as fast.
        let rounds = vec![
            vec![row(100.0, None, 0), row(110.0, None, 0), row(104.0, Some(150.0), 0)],
            vec![row(200.0, None, 0), row(110.0, None, 0), row(100.0, Some(250.0), 0)],
        ];
        let verdicts = verdicts(&kinds, &rounds);
        let find = |name: &str| verdicts.iter().find(|v| v.target.starts_with(name)).expect(name);
        let throughput = find("throughput, telemetry on / nginx");
        assert_eq!(throughput.rounds, vec![104.0, 50.0]);
        assert_eq!(throughput.met, 1);
        assert_eq!(find("added latency p99").met, 1);
        let lost = find("throughput lost to telemetry (on vs off)");
        assert!((lost.rounds[0] - 100.0 * 6.0 / 110.0).abs() < 1e-9);
        assert!(verdicts.iter().all(|v| !v.target.contains("null receiver")), "no null-receiver row, no figure");
        assert!(verdicts.iter().all(|v| !v.target.contains("every core busy")), "no machine CPU, no ceiling");
    }

    #[test]
    fn the_ceiling_compares_what_each_row_costs_the_whole_machine() {
        let kinds = [Kind::Nginx, Kind::TelemetryOn];
        // nginx: 1.6 cores at 50,000 req/s, 32 µs a request; telemetry on: 1.6 cores at
        // 32,000 req/s, 50 µs a request. With every core busy, on would reach 64 % of nginx.
        let mut nginx = row(50_000.0, None, 0);
        nginx.machine_cpu_us_per_request = Some(32.0);
        let mut on = row(32_000.0, Some(100.0), 0);
        on.machine_cpu_us_per_request = Some(50.0);
        let verdicts = verdicts(&kinds, &[vec![nginx, on]]);
        let ceiling = verdicts.iter().find(|v| v.target.contains("every core busy")).expect("the ceiling");
        assert!((ceiling.rounds[0] - 64.0).abs() < 1e-9, "{ceiling:?}");
        assert_eq!(ceiling.met, 0);
    }
}
