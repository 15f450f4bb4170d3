"""Sends telemetry to a meshlens collector with the real OpenTelemetry Python SDK.

Two services: py-checkout exports over OTLP/gRPC, py-payments over OTLP/HTTP (protobuf).
py-checkout's CLIENT span calls py-payments, whose SERVER span continues the trace through
W3C trace-context headers; py-payments logs inside its span; py-checkout counts orders.
Prints {"trace_id": ...} on stdout.

Usage: otel_sdk.py GRPC_ENDPOINT HTTP_ENDPOINT   (e.g. http://127.0.0.1:4317 http://127.0.0.1:4318)
With https:// endpoints the exporters speak TLS, trusting the CA that the variable
OTEL_EXPORTER_OTLP_CERTIFICATE names.
"""
import json
import logging
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


def main() -> None:
    grpc_endpoint, http_endpoint = sys.argv[1], sys.argv[2]
    # https:// endpoints: TLS, trusting OTEL_EXPORTER_OTLP_CERTIFICATE's CA.
    insecure = grpc_endpoint.startswith("http://")
    checkout = Resource.create({"service.name": "py-checkout", "service.version": "1.4.2"})
    payments = Resource.create({"service.name": "py-payments"})

    checkout_traces = TracerProvider(resource=checkout)
    checkout_traces.add_span_processor(BatchSpanProcessor(GrpcSpanExporter(endpoint=grpc_endpoint, insecure=insecure)))
    payments_traces = TracerProvider(resource=payments)
    payments_traces.add_span_processor(BatchSpanProcessor(HttpSpanExporter(endpoint=f"{http_endpoint}/v1/traces")))

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=grpc_endpoint, insecure=insecure), export_interval_millis=500)
    meters = MeterProvider(resource=checkout, metric_readers=[reader])
    orders = meters.get_meter("interop").create_counter("orders", unit="{order}", description="Orders placed")

    logs = LoggerProvider(resource=payments)
    logs.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{http_endpoint}/v1/logs")))
    logger = logging.getLogger("payments")
    logger.addHandler(LoggingHandler(logger_provider=logs))
    logger.setLevel(logging.INFO)

    client_tracer = checkout_traces.get_tracer("interop")
    server_tracer = payments_traces.get_tracer("interop")
    with client_tracer.start_as_current_span("POST /pay", kind=SpanKind.CLIENT, attributes={"http.request.method": "POST", "server.address": "payments"}) as client:
        headers: dict = {}
        TraceContextTextMapPropagator().inject(headers)
        headers["tracestate"] = "congo=t61rcWkgMzE"  # a vendor's entry, as a caller's tracestate would carry it
        parent = TraceContextTextMapPropagator().extract(headers)
        with server_tracer.start_as_current_span("POST /pay", context=parent, kind=SpanKind.SERVER, attributes={"http.response.status_code": 500}) as server:
            server.add_event("card declined", {"card.brand": "visa"})
            server.set_status(Status(StatusCode.ERROR, "card declined"))
            logger.warning("payment declined for order 42")
        orders.add(3, {"region": "eu"})
        trace_id = format(client.get_span_context().trace_id, "032x")

    for provider in (checkout_traces, payments_traces):
        provider.force_flush()
        provider.shutdown()
    meters.force_flush()
    meters.shutdown()
    logs.force_flush()
    logs.shutdown()
    print(json.dumps({"trace_id": trace_id}))


if __name__ == "__main__":
    main()
