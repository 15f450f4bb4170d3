"""A server-streaming gRPC method served and called with grpcio, for a meshlens sidecar between.

`serve ADDRESS` serves /demo.Feed/Watch at ADDRESS: a request naming N (its bytes, as
text) is answered with N messages, then the OK status; it stops by itself after a minute.
`call SIDECAR SERVICE N` calls it through SIDECAR (the caller's sidecar's outbound address)
with `:authority` SERVICE and prints how many messages came.

Usage: grpc_stream.py serve 127.0.0.1:15002
       grpc_stream.py call 127.0.0.1:15001 feed 25
"""
import sys
from concurrent import futures

import grpc


def watch(request: bytes, _context):
    for i in range(int(request.decode() or "0")):
        yield f"update {i}".encode()


def serve(address: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler("demo.Feed", {"Watch": grpc.unary_stream_rpc_method_handler(watch)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    server.start()
    server.wait_for_termination(timeout=60)


def call(sidecar: str, service: str, n: int) -> None:
    options = [("grpc.default_authority", service), ("grpc.enable_retries", 0)]
    with grpc.insecure_channel(sidecar, options=options) as channel:
        # Raw bytes in and out.
        watch_call = channel.unary_stream("/demo.Feed/Watch")
        print(sum(1 for _ in watch_call(str(n).encode(), timeout=10)))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        call(sys.argv[2], sys.argv[3], int(sys.argv[4]))
