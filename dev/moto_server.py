"""moto's server with DynamoDB's atomicity: one request at a time.

DynamoDB evaluates a condition expression and applies the write as one
atomic step per item. moto's threaded server does not: two concurrent
conditional writes to one item can both pass their condition (seen here
about once in a hundred races of twelve writers). The lease and version
fencing this project relies on are exactly such writes, so the tests run
against this wrapper, which serialises requests (connections stay
concurrent). Python's GIL already kept moto to one core, so little
throughput is lost. werkzeug answers every request with `Connection:
close`, so each call is a new connection: fine for tests, wrong for
measuring CPU per request (the benchmarks use dev/dynalite.sh for DynamoDB).

    python3 dev/moto_server.py <port>
"""

import io
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    create_backend_app,
)
from werkzeug.serving import run_simple


class Serialised:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        # Read the body before taking the lock: a client that sends headers
        # and body in two segments can wait a delayed ACK (~40 ms) for the
        # second, and no other request may wait behind that.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        with self.lock:
            # Build the whole response under the lock: moto may produce the
            # body lazily.
            return list(self.app(environ, start_response))


def main():
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, Serialised(app), threaded=True)


if __name__ == "__main__":
    main()
