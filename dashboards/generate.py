#!/usr/bin/env python3
"""Writes the Grafana dashboards in dashboards/grafana/ from the panel lists below.

Edit this file, then run `python3 dashboards/generate.py`; `tests/dashboards.rs` runs every
expression written here against a real Prometheus that scraped the demo mesh.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
RI = "$__rate_interval"

# Label filters shared by the panels.
NS = 'destination_namespace=~"$namespace"'
EDGE = f'{NS},source_service=~"$source",destination_service=~"$destination"'
SVC_IN = f'{NS},destination_service=~"$service"'
SVC_OUT = f'source_namespace=~"$namespace",source_service=~"$service"'
WL_IN = f'{NS},destination_workload=~"$workload"'
WL_OUT = f'source_namespace=~"$namespace",source_workload=~"$workload"'
# The sidecars' own process figures, which they export over OTLP (meshlens_process_*).
PROXY = 'sdk="meshlens-proxy",namespace=~"$namespace"'
PROXY_WL = f'{PROXY},workload=~"$workload"'


def rate(metric, sel, by=None):
    inner = f"rate({metric}{{{sel}}}[{RI}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def error_ratio(sel, by=None):
    # Failures `or` the requests times zero: a series that has never failed has no failure
    # series at all, and its ratio is 0, not "no data".
    failed = rate("meshlens_requests_total", sel + ',classification="failure"', by)
    total = rate("meshlens_requests_total", sel, by)
    return f"({failed} or {total} * 0) / {total}"


def actual_success(sel, by):
    # Each retry followed a failed attempt and each request that succeeded had one successful
    # attempt: (requests - failed) / (requests + retries). Every edge has a retries series,
    # at 0 where its callers never retried.
    total = rate("meshlens_requests_total", sel, by)
    failed = rate("meshlens_requests_total", sel + ',classification="failure"', by)
    return f"({total} - ({failed} or {total} * 0)) / ({total} + {rate('meshlens_retries_total', sel, by)})"


def received(sel):
    # What a service received: every attempt its callers' sidecars made, as the service's own
    # side counts them (Istio's destination-reported requests, linkerd viz stat's inbound).
    return f"{rate('meshlens_requests_total', sel)} + {rate('meshlens_retries_total', sel)}"


RECEIVED = ("Requests received: every attempt the callers' sidecars made, so a request retried once counts twice "
            "(the panels below count each request once).")
RECEIVED_SUCCESS = ("Successful attempts over all attempts received: the callers' retries do not hide the failures "
                    "they retried. What the callers got in the end is the mesh overview's success ratio.")


def quantile(q, sel, by=None):
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate(meshlens_request_duration_seconds_bucket{{{sel}}}[{RI}])))"


def datasource_var():
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0}


def query_var(name, label, query, multi=True):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "includeAll": multi, "multi": multi, "allValue": ".*", "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {}}


class Board:
    def __init__(self, uid, title, description, variables):
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.panels = []
        self.x = self.y = 0
        self.row_height = 0

    def panel(self, title, kind, exprs, unit="short", w=12, h=8, legend=None, description=""):
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_height
            self.row_height = 0
        targets = []
        for i, e in enumerate(exprs if isinstance(exprs, list) else [exprs]):
            expr, fmt = (e, legend) if isinstance(e, str) else e
            t = {"datasource": DS, "expr": expr, "refId": chr(65 + i), "legendFormat": fmt or "__auto"}
            if kind == "table":
                t.update({"instant": True, "format": "table"})
            targets.append(t)
        p = {"id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
             "datasource": DS, "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
             "targets": targets, "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
             "options": {}}
        if kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "area"}
        if kind == "table":
            p["transformations"] = [{"id": "merge"}, {"id": "organize", "options": {"excludeByName": {"Time": True}}}]
        self.panels.append(p)
        self.x += w
        self.row_height = max(self.row_height, h)

    def json(self):
        return {"uid": self.uid, "title": self.title, "description": self.description,
                "tags": ["meshlens", "service-mesh"], "timezone": "browser", "schemaVersion": 39,
                "version": 1, "editable": True, "graphTooltip": 1, "refresh": "10s",
                "time": {"from": "now-15m", "to": "now"},
                "templating": {"list": self.variables}, "annotations": {"list": []},
                "links": [{"title": "meshlens dashboards", "type": "dashboards", "tags": ["meshlens"], "asDropdown": True}],
                "panels": self.panels}


def overview():
    b = Board("meshlens-overview", "meshlens / Mesh overview",
              "Every edge of the mesh: total traffic, success, latency, busiest and worst edges.",
              [datasource_var(),
               query_var("namespace", "Namespace", "label_values(meshlens_requests_total, destination_namespace)"),
               query_var("source", "Source service", 'label_values(meshlens_requests_total{destination_namespace=~"$namespace"}, source_service)'),
               query_var("destination", "Destination service", 'label_values(meshlens_requests_total{destination_namespace=~"$namespace"}, destination_service)')])
    b.panel("Request rate", "stat", rate("meshlens_requests_total", EDGE), "reqps", w=6, h=5)
    b.panel("Success ratio", "stat", f"1 - ({error_ratio(EDGE)})", "percentunit", w=6, h=5)
    b.panel("p99 latency", "stat", quantile(0.99, EDGE), "s", w=6, h=5)
    b.panel("Edges with traffic", "stat", f"count({rate('meshlens_requests_total', EDGE, 'source_service, destination_service')})", "none", w=6, h=5)
    b.panel("Request rate by destination", "timeseries", rate("meshlens_requests_total", EDGE, "destination_service"), "reqps", legend="{{destination_service}}")
    b.panel("p99 latency by destination", "timeseries", quantile(0.99, EDGE, "destination_service"), "s", legend="{{destination_service}}")
    b.panel("Busiest edges", "table", f"topk(10, {rate('meshlens_requests_total', EDGE, 'source_service, destination_service, protocol')})", "reqps")
    b.panel("Worst edges by error ratio", "table", f"topk(10, {error_ratio(EDGE, 'source_service, destination_service')})", "percentunit",
            description="Edges with failures (5xx, gRPC errors, resets, timeouts), highest ratio first.")
    b.panel("Error ratio by edge", "timeseries", error_ratio(EDGE, "source_service, destination_service"), "percentunit",
            legend="{{source_service}} → {{destination_service}}", w=24)
    b.panel("Retries by edge", "timeseries", rate("meshlens_retries_total", EDGE, "source_service, destination_service"), "reqps",
            legend="{{source_service}} → {{destination_service}}",
            description="Retries the callers' sidecars made; the request rate counts a retried request once.")
    b.panel("Actual success by edge", "timeseries", actual_success(EDGE, "source_service, destination_service"), "percentunit",
            legend="{{source_service}} → {{destination_service}}",
            description="Successful attempts over all attempts, the callers' retries included. "
                        "The success ratio counts each request once, by its last attempt.")
    b.panel("Sidecar CPU by workload", "timeseries", rate("meshlens_process_cpu_seconds_total", PROXY, "workload"), "none",
            legend="{{workload}}", description="Cores the workload's sidecars use, all instances together: what the mesh costs it.")
    b.panel("Sidecar memory by workload", "timeseries", f"sum by (workload) (meshlens_process_resident_memory_bytes{{{PROXY}}})", "bytes",
            legend="{{workload}}", description="Resident memory of the workload's sidecars, all instances together.")
    return b


def service():
    b = Board("meshlens-service", "meshlens / Service detail",
              "One service: what it receives (by caller and by version) and what it calls.",
              [datasource_var(),
               query_var("namespace", "Namespace", "label_values(meshlens_requests_total, destination_namespace)"),
               query_var("service", "Service", 'label_values(meshlens_requests_total{destination_namespace=~"$namespace"}, destination_service)', multi=False)])
    b.panel("Inbound request rate", "stat", received(SVC_IN), "reqps", w=8, h=5, description=RECEIVED)
    b.panel("Inbound success ratio", "stat", actual_success(SVC_IN, None), "percentunit", w=8, h=5, description=RECEIVED_SUCCESS)
    b.panel("Inbound p99", "stat", quantile(0.99, SVC_IN), "s", w=8, h=5)
    b.panel("Inbound by caller", "timeseries", rate("meshlens_requests_total", SVC_IN, "source_service"), "reqps", legend="{{source_service}}")
    b.panel("Inbound by version", "timeseries", rate("meshlens_requests_total", SVC_IN, "destination_version"), "reqps", legend="{{destination_version}}")
    b.panel("Inbound p50 / p99 by version", "timeseries",
            [(quantile(0.5, SVC_IN, "destination_version"), "p50 {{destination_version}}"),
             (quantile(0.99, SVC_IN, "destination_version"), "p99 {{destination_version}}")], "s")
    b.panel("Inbound responses by code", "timeseries", rate("meshlens_requests_total", SVC_IN, "response_code"), "reqps", legend="{{response_code}}")
    b.panel("Outbound by destination", "timeseries", rate("meshlens_requests_total", SVC_OUT, "destination_service"), "reqps", legend="{{destination_service}}")
    b.panel("Outbound error ratio by destination", "timeseries", error_ratio(SVC_OUT, "destination_service"), "percentunit", legend="{{destination_service}}")
    b.panel("Outbound p99 by destination", "timeseries", quantile(0.99, SVC_OUT, "destination_service"), "s", legend="{{destination_service}}", w=24)
    return b


def workload():
    b = Board("meshlens-workload", "meshlens / Workload detail",
              "One workload (a service's version): inbound and outbound traffic, latency and bytes.",
              [datasource_var(),
               query_var("namespace", "Namespace", "label_values(meshlens_requests_total, destination_namespace)"),
               query_var("workload", "Workload", 'label_values(meshlens_requests_total{destination_namespace=~"$namespace"}, destination_workload)', multi=False)])
    b.panel("Inbound request rate", "stat", received(WL_IN), "reqps", w=8, h=5, description=RECEIVED)
    b.panel("Inbound success ratio", "stat", actual_success(WL_IN, None), "percentunit", w=8, h=5, description=RECEIVED_SUCCESS)
    b.panel("Inbound p99", "stat", quantile(0.99, WL_IN), "s", w=8, h=5)
    b.panel("Inbound by caller workload", "timeseries", rate("meshlens_requests_total", WL_IN, "source_workload"), "reqps", legend="{{source_workload}}")
    b.panel("Inbound latency", "timeseries",
            [(quantile(0.5, WL_IN), "p50"), (quantile(0.9, WL_IN), "p90"), (quantile(0.99, WL_IN), "p99")], "s")
    b.panel("Outbound by destination workload", "timeseries", rate("meshlens_requests_total", WL_OUT, "destination_workload"), "reqps", legend="{{destination_workload}}")
    b.panel("Outbound error ratio", "timeseries", error_ratio(WL_OUT, "destination_service"), "percentunit", legend="{{destination_service}}")
    b.panel("Inbound bytes", "timeseries",
            [(rate("meshlens_request_bytes_total", WL_IN), "request"), (rate("meshlens_response_bytes_total", WL_IN), "response")], "Bps", w=24)
    b.panel("Sidecar CPU by instance", "timeseries", rate("meshlens_process_cpu_seconds_total", PROXY_WL, "instance"), "none",
            legend="{{instance}}", description="Cores each of the workload's sidecars uses (its service.instance.id).")
    memory = f"sum by (instance) (meshlens_process_resident_memory_bytes{{{PROXY_WL}}})"
    b.panel("Sidecar memory by instance", "timeseries", memory, "bytes",
            legend="{{instance}}", description="Resident memory of each of the workload's sidecars.")
    return b


def collector():
    b = Board("meshlens-collector", "meshlens / Collector health",
              "The collector itself: OTLP items received, accepted, rejected, refused; what it stores and evicts; SQL; its CPU and memory.",
              [datasource_var()])
    b.panel("Items received by signal", "timeseries", "sum by (signal) (rate(meshlens_collector_received_total[$__rate_interval]))", "short", legend="{{signal}}")
    b.panel("Items accepted by transport", "timeseries", "sum by (signal, transport) (rate(meshlens_collector_accepted_total[$__rate_interval]))", "short", legend="{{signal}} {{transport}}")
    b.panel("Rejected items (invalid)", "timeseries", "sum by (signal) (rate(meshlens_collector_rejected_total[$__rate_interval]))", "short", legend="{{signal}}", w=8)
    b.panel("Refused requests (ingest full)", "timeseries", "sum by (signal, transport) (rate(meshlens_collector_refused_requests_total[$__rate_interval]))", "reqps", legend="{{signal}} {{transport}}", w=8)
    b.panel("Malformed requests", "timeseries", "sum by (signal, transport) (rate(meshlens_collector_malformed_requests_total[$__rate_interval]))", "reqps", legend="{{signal}} {{transport}}", w=8)
    b.panel("Ingest in flight", "timeseries", "meshlens_collector_ingest_inflight_bytes", "bytes", legend="in flight", w=8)
    b.panel("Stored items", "timeseries", "sum by (kind) (meshlens_collector_stored)", "short", legend="{{kind}}", w=8)
    b.panel("Table memory", "timeseries", "sum by (kind) (meshlens_collector_store_memory_bytes)", "bytes", legend="{{kind}}", w=8)
    b.panel("Evicted by retention", "timeseries", "sum by (kind) (rate(meshlens_collector_evicted_total[$__rate_interval]))", "short", legend="{{kind}}")
    b.panel("Edge series exported", "stat", "count(meshlens_requests_total)", "none")
    # The collector process itself (the scrape job of prometheus/scrape.yml).
    cpu = 'rate(process_cpu_seconds_total{job="meshlens"}[$__rate_interval])'
    b.panel("Collector CPU", "timeseries", cpu, "percentunit", legend="{{instance}}", w=8)
    b.panel("Collector resident memory", "timeseries", 'process_resident_memory_bytes{job="meshlens"}', "bytes", legend="{{instance}}", w=8)
    b.panel("Collector open files", "timeseries", 'process_open_fds{job="meshlens"}', "short", legend="{{instance}}", w=8)
    return b


def main():
    out = os.path.join(HERE, "grafana")
    os.makedirs(out, exist_ok=True)
    for name, board in [("mesh-overview", overview()), ("service-detail", service()),
                        ("workload-detail", workload()), ("collector-health", collector())]:
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(board.json(), f, indent=2, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
