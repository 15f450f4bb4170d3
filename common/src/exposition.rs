//! Writing a `/metrics` registry in the format the scraper asked for.
//!
//! Content is negotiated as Prometheus's own client libraries do it: a scraper that accepts
//! `application/openmetrics-text` (Prometheus itself) gets OpenMetrics, as prometheus-client
//! writes it; others (`curl`, `promtool check metrics`, older scrapers) get the classic text
//! format 0.0.4, where a counter's HELP and TYPE name its `_total` series, and there are no
//! `# UNIT` or `# EOF` lines and no exemplars.

use prometheus_client::registry::Registry;

/// OpenMetrics' content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format's content type.
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes `registry` for a scraper whose `Accept` header is `accept`: the content type and
/// the text.
pub fn encode(registry: &Registry, accept: Option<&str>) -> Result<(&'static str, String), std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
        Ok((OPENMETRICS, out))
    } else {
        Ok((TEXT_004, to_text_004(&out)))
    }
}

/// OpenMetrics text rewritten as the classic Prometheus text format.
pub fn to_text_004(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            // Exemplars follow a sample after ` # `; the classic format has none.
            None if !line.starts_with('#') => out.push_str(line.split_once(" # ").map_or(line, |(sample, _)| sample)),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn counters_are_named_by_their_total_series_in_the_classic_format() {
        let om = "# HELP requests Requests.\n# TYPE requests counter\nrequests_total{a=\"b\"} 3\n\
                  # HELP latency Latency.\n# TYPE latency histogram\n# UNIT latency seconds\nlatency_count 1 # {trace_id=\"ab\"} 0.2 1.5\n# EOF\n";
        let text = to_text_004(om);
        assert_eq!(
            text,
            "# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total{a=\"b\"} 3\n\
             # HELP latency Latency.\n# TYPE latency histogram\nlatency_count 1\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_classic_format() {
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        requests.inc();
        registry.register("requests", "Requests.", requests);
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        let (content_type, text) = encode(&registry, Some(prometheus)).expect("encodes");
        assert_eq!((content_type, text.ends_with("# EOF\n")), (OPENMETRICS, true), "{text}");
        for accept in [None, Some("*/*"), Some("text/plain")] {
            let (content_type, text) = encode(&registry, accept).expect("encodes");
            assert_eq!(content_type, TEXT_004);
            assert!(text.contains("# TYPE requests_total counter\nrequests_total 1\n") && !text.contains("# EOF"), "{text}");
        }
    }
}
