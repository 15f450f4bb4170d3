"""Makes unary gRPC calls with grpcio (gRPC's own Python library) through a meshlens sidecar.

The calls go to SIDECAR (the sidecar's outbound address) with `:authority` SERVICE, as an
application in the mesh would make them: HTTP/2 without a content-length, the message
length-prefixed, the status in the trailers (or alone in the headers of an error). grpcio
comes with the OpenTelemetry OTLP/gRPC exporter (tests/interop/requirements.txt).
Each call's deadline is DEADLINE seconds (10 by default).
Prints {"ok": N, "codes": {"UNAVAILABLE": N, ...}} on stdout.

Usage: grpc_calls.py SIDECAR SERVICE METHOD CALLS [DEADLINE]   (e.g. 127.0.0.1:15001 flaky /demo.Flaky/Work 40)
"""
import json
import sys

import grpc


def main() -> None:
    sidecar, service, method, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    deadline = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    options = [("grpc.default_authority", service), ("grpc.enable_retries", 0)]
    ok, codes = 0, {}
    with grpc.insecure_channel(sidecar, options=options) as channel:
        # Raw bytes in and out: a message with one string field (`demo`).
        call = channel.unary_unary(method)
        for _ in range(calls):
            try:
                call(b"\x0a\x04demo", timeout=deadline)
                ok += 1
            except grpc.RpcError as error:
                name = error.code().name
                codes[name] = codes.get(name, 0) + 1
    print(json.dumps({"ok": ok, "codes": codes}))


if __name__ == "__main__":
    main()
