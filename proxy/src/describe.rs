//! `meshlens-proxy --check`: the configuration as the sidecar would run with it, its TOML and
//! OpenTelemetry's variables taken together, for a person to read: which collector it
//! exports to, how it samples and propagates, what it calls. Export headers show by name
//! only: their values are secrets.

use std::{fmt::Write as _, time::Duration};

use crate::{
    config::{Compression, OtlpProtocol, ProxyConfig},
    telemetry::{resource, temporality::Temporality},
};

/// A duration as the configuration writes it.
fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// `items` joined by commas, or `none`.
fn listed<I: IntoIterator<Item = String>>(items: I) -> String {
    let items: Vec<String> = items.into_iter().collect();
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

/// Export headers by name, their values hidden.
fn hidden(headers: &crate::telemetry::export_headers::ExportHeaders) -> String {
    listed(headers.map().keys().map(|name| format!("{name} (value hidden)")))
}

/// The effective configuration, one setting a line.
pub fn effective(config: &ProxyConfig) -> String {
    let mut out = String::new();
    let id = &config.identity;
    let t = &config.telemetry;
    let _ = writeln!(out, "workload      {}/{} (service {}, version {})", id.namespace, id.workload, id.service, id.version);
    let _ = writeln!(out, "inbound       {} -> application {}", config.inbound_listen, config.app);
    let _ = writeln!(out, "outbound      {}", config.outbound_listen);
    let _ = writeln!(out, "admin         {} (/metrics, /ready)", config.admin_listen);
    for service in &config.services {
        let endpoints = service.endpoints.iter().map(|e| format!("{} {} weight {}", e.address, e.identity.version, e.weight));
        let _ = writeln!(out, "service       {}.{}: {}", service.name, service.namespace, listed(endpoints));
    }
    let protocol = |protocol| match protocol {
        OtlpProtocol::Grpc => "OTLP/gRPC",
        OtlpProtocol::HttpProtobuf => "OTLP/HTTP (protobuf)",
    };
    let compression = |compression: Compression| match compression {
        Compression::None => "no compression",
        other => other.as_str(),
    };
    if t.exports() {
        let (shared_protocol, shared_compression) = (protocol(t.otlp_protocol), compression(t.compression));
        let _ = writeln!(out, "export        {shared_protocol}, {shared_compression}, timeout {}", duration(t.export_timeout));
        let signals = [("traces", &t.signals.traces), ("logs", &t.signals.logs), ("metrics", &t.signals.metrics)];
        for (signal, export) in signals {
            let target = match t.signal_endpoint(export) {
                None => "off".to_owned(),
                Some((endpoint, true)) if t.signal_protocol(export) == OtlpProtocol::HttpProtobuf => {
                    crate::telemetry::otlp_http::signal_url(endpoint, false, &format!("/v1/{signal}"))
                }
                Some((endpoint, _)) => endpoint.to_owned(),
            };
            let exported = t.signal_endpoint(export).is_some();
            let own_headers = export.headers.as_ref().filter(|_| exported);
            let headers = own_headers.map_or_else(String::new, |headers| format!(", headers {}", hidden(headers)));
            // The settings of its own, where they differ from the shared ones.
            let own = [
                export.protocol.filter(|p| *p != t.otlp_protocol).map(|p| protocol(p).to_owned()),
                export.compression.filter(|c| *c != t.compression).map(|c| compression(c).to_owned()),
                export.timeout.filter(|d| *d != t.export_timeout).map(|d| format!("timeout {}", duration(d))),
                export.max_retry_time.filter(|d| *d != t.max_retry_time).map(|d| format!("retried for {}", duration(d))),
                target.starts_with("https://").then(|| t.signal_tls(export).describe()),
            ];
            let own: Vec<String> = own.into_iter().flatten().filter(|_| exported).collect();
            let own = if own.is_empty() { String::new() } else { format!(" ({})", own.join(", ")) };
            let _ = writeln!(out, "  {signal:<11} {target}{own}{headers}");
        }
        let metrics = match t.signal_endpoint(&t.signals.metrics) {
            Some(_) => match t.metrics_temporality {
                Temporality::Cumulative => format!("; metrics every {}", duration(t.metrics_interval)),
                other => format!("; metrics every {}, {}", duration(t.metrics_interval), other.as_str()),
            },
            None => String::new(),
        };
        let (every, batch, queue) = (duration(t.flush_interval), t.max_batch, t.queue_capacity);
        let _ = writeln!(out, "  batches     sent every {every} or at {batch} records, {queue} records a signal queued at most{metrics}");
    } else {
        let _ = writeln!(out, "export        off");
    }
    let _ = writeln!(out, "export headers {}", hidden(&t.otlp_headers));
    let resource = listed(t.resource_attributes.iter().map(|(k, v)| format!("{k}={v}")));
    let drawn = t.resource_attributes.iter().all(|(k, _)| k != resource::INSTANCE_ID);
    let drawn = if drawn { format!("; {} drawn at random at start", resource::INSTANCE_ID) } else { String::new() };
    let _ = writeln!(out, "resource      {resource}{drawn}");
    let slow = t.sampling.slow_threshold.map_or_else(|| "off".to_owned(), duration);
    let sampling = &t.sampling;
    let _ = writeln!(
        out,
        "sampling      {} of new traces, a caller's decision followed; failed requests kept: {}; slow ones kept: {slow}",
        sampling.ratio,
        if sampling.keep_errors { "yes" } else { "no" },
    );
    let formats = [(t.propagation.w3c, "w3c"), (t.propagation.b3, "b3"), (t.propagation.b3multi, "b3multi")];
    let written = listed(formats.iter().filter(|(on, _)| *on).map(|(_, name)| (*name).to_owned()));
    let _ = writeln!(out, "propagation   {written}, and whatever a request arrives with");
    let stdout = match &t.stdout_access_log {
        None => "off".to_owned(),
        Some(format) => format.kind().to_owned(),
    };
    let otlp = if t.signal_endpoint(&t.signals.logs).is_some() { "OTLP log records for every request" } else { "no OTLP log records" };
    let _ = writeln!(out, "access log    {otlp}; stdout {stdout}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_configuration_names_the_export_and_hides_header_values() {
        let toml = crate::config::tests::GOOD.replace("[telemetry]", "[telemetry]\notlp_headers = { authorization = \"Bearer s3cret\" }");
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://gateway:4318".to_owned()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_owned()),
            "OTEL_TRACES_SAMPLER" => Some("parentbased_traceidratio".to_owned()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".to_owned()),
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" => Some("http://logs:3100/otlp/v1/logs".to_owned()),
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS" => Some("x-scope-orgid=t3nant".to_owned()),
            "OTEL_METRICS_EXPORTER" => Some("none".to_owned()),
            "OTEL_BSP_MAX_QUEUE_SIZE" => Some("1024".to_owned()),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => Some("grpc".to_owned()),
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION" => Some("gzip".to_owned()),
            "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT" => Some("2500".to_owned()),
            "OTEL_BLRP_EXPORT_TIMEOUT" => Some("30000".to_owned()),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("https://tempo:4317".to_owned()),
            _ => None,
        };
        let (config, _) = ProxyConfig::from_toml_with_environment(&toml, &env).expect("valid");
        let text = effective(&config);
        for line in [
            "workload      shop/catalog-v1 (service catalog, version v1)",
            "service       reviews.shop: 127.0.0.1:5001 v1 weight 80, 127.0.0.1:5002 v2 weight 20",
            "export        OTLP/HTTP (protobuf), no compression, timeout 5s",
            "  traces      https://tempo:4317 (OTLP/gRPC, gzip, TLS trusting the system's roots)\n",
            "  logs        http://logs:3100/otlp/v1/logs (timeout 2500ms, retried for 30s), headers x-scope-orgid (value hidden)",
            "  metrics     off",
            "  batches     sent every 500ms or at 256 records, 1024 records a signal queued at most\n",
            "export headers authorization (value hidden)",
            "sampling      0.25 of new traces",
            "propagation   w3c, and whatever",
            "access log    OTLP log records for every request; stdout off",
            "resource      none; service.instance.id drawn at random at start\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        assert!(!text.contains("s3cret") && !text.contains("t3nant"), "{text}");
        let named = |value: &str| {
            let env = |name: &str| (name == "OTEL_RESOURCE_ATTRIBUTES").then(|| value.to_owned());
            effective(&ProxyConfig::from_toml_with_environment(crate::config::tests::GOOD, &env).expect("valid").0)
        };
        assert!(named("service.instance.id=shop-7f9c").contains("resource      service.instance.id=shop-7f9c\n"));
        let delta = crate::config::tests::GOOD.replace("[telemetry]", "[telemetry]\nmetrics_temporality = \"delta\"");
        let text = effective(&ProxyConfig::from_toml(&delta).expect("valid"));
        assert!(text.contains("records a signal queued at most; metrics every 10s, delta\n"), "{text}");
    }
}
