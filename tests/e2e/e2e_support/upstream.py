"""Local upstream servers (plain HTTP and HTTPS with the test leaf) that record every request they
receive, so tests can assert both what arrived and that nothing arrived.

Routes:
  /echo...          200, JSON {method, path, headers: [[name, value], ...], body_len}
  /chunked          200, Transfer-Encoding: chunked, 5 chunks 200 ms apart, each
                    "chunk N t=<server time.monotonic()>\\n"
  /status/NNN       that status, short text body (none for 1xx/204/304)
  /upload           JSON {received: <body bytes>} (any method; bodies are counted, not kept)
  /bytes/N          N bytes of b"x", Content-Length, streamed in 64 KiB writes
  anything else     404
"""

import dataclasses
import http.server
import json
import socket
import ssl
import threading
import time

CHUNK_COUNT = 5
CHUNK_INTERVAL_S = 0.2
# Bodies up to this size are kept in the record (for injection tests); larger ones only counted.
KEEP_BODY_BYTES = 1 << 20


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str  # as sent in the request line (origin-form, with query)
    headers: list  # [(name, value)] in order received
    body_len: int
    body: bytes  # the first KEEP_BODY_BYTES
    tls: bool
    sni: str | None  # the TLS server name the client asked for
    client_port: int

    def header(self, name):
        """The first value of header `name` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_names(self):
        return {key.lower() for key, _ in self.headers}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sbx-e2e-upstream"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # pytest shows captured output on failure; per-request lines would drown it

    def _read_body(self):
        length = 0
        kept = bytearray()

        def take(data):
            nonlocal length
            length += len(data)
            if len(kept) < KEEP_BODY_BYTES:
                kept.extend(data[:KEEP_BODY_BYTES - len(kept)])

        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailer section ends with an empty line.
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, 65536))
                    if not data:
                        raise ConnectionError("client closed inside a chunk")
                    take(data)
                    remaining -= len(data)
                self.rfile.readline(8)  # CRLF after the chunk
        elif self.headers.get("Content-Length"):
            remaining = int(self.headers["Content-Length"])
            while remaining:
                data = self.rfile.read(min(remaining, 65536))
                if not data:
                    raise ConnectionError("client closed inside the body")
                take(data)
                remaining -= len(data)
        return length, bytes(kept)

    def _record(self, body_len, body):
        record = RecordedRequest(
            method=self.command, path=self.path, headers=list(self.headers.items()),
            body_len=body_len, body=body, tls=isinstance(self.connection, ssl.SSLSocket),
            sni=getattr(self.connection, "sni", None), client_port=self.client_address[1])
        self.server.upstream.record(record)
        return record

    def _send(self, status, body=b"", content_type="text/plain", extra_headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in extra_headers:
            self.send_header(name, value)
        no_body = status < 200 or status in (204, 304) or self.command == "HEAD"
        if status >= 200 and status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not no_body:
            self.wfile.write(body)

    def _handle(self):
        body_len, body = self._read_body()
        record = self._record(body_len, body)
        path = self.path.split("?", 1)[0]
        if path.startswith("/echo"):
            reply = {"method": self.command, "path": self.path,
                     "headers": [[k, v] for k, v in record.headers], "body_len": body_len,
                     "tls": record.tls, "sni": record.sni}
            self._send(200, json.dumps(reply).encode(), "application/json")
        elif path == "/chunked":
            self._send_chunked()
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            self._send(status, f"status {status}\n".encode())
        elif path == "/upload":
            self._send(200, json.dumps({"received": body_len}).encode(), "application/json")
        elif path.startswith("/bytes/"):
            self._send_bytes(int(path.rsplit("/", 1)[1]))
        else:
            self._send(404, b"no such test route\n")

    def _send_chunked(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(CHUNK_COUNT):
            if i:
                time.sleep(CHUNK_INTERVAL_S)  # the point of the route: data spread over time
            data = f"chunk {i} t={time.monotonic():.3f}\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_bytes(self, count):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(count))
        self.end_headers()
        block = b"x" * 65536
        while count:
            n = min(count, len(block))
            self.wfile.write(block[:n])
            count -= n

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = _handle

    def do_HEAD(self):
        self._handle()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream, tls_context):
        self.upstream = upstream
        self.tls_context = tls_context
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, so a client that stalls
        # or fails the handshake never blocks the accept loop.
        if self.tls_context is not None:
            request.settimeout(10)
            try:
                request = self.tls_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self.upstream.record_handshake_failure(repr(e))
                return
            request.settimeout(30)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # clients that vanish mid-request are part of several tests


class Upstream:
    """One server on 127.0.0.1:<free port>. `requests` lists what it received, in order."""

    def __init__(self, cert=None, key=None):
        self.tls = cert is not None
        context = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(cert), str(key))

            def remember_sni(ssl_socket, server_name, _context):
                ssl_socket.sni = server_name

            context.sni_callback = remember_sni
        self._lock = threading.Lock()
        self._requests = []
        self._handshake_failures = []
        self._server = _Server(self, context)
        self.port = self._server.server_address[1]
        self.scheme = "https" if self.tls else "http"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"upstream-{self.scheme}-{self.port}", daemon=True)
        self._thread.start()

    def record(self, request):
        with self._lock:
            self._requests.append(request)

    def record_handshake_failure(self, reason):
        with self._lock:
            self._handshake_failures.append(reason)

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    @property
    def handshake_failures(self):
        with self._lock:
            return list(self._handshake_failures)

    def requests_to(self, path_prefix):
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    def clear(self):
        with self._lock:
            self._requests.clear()
            self._handshake_failures.clear()

    def close(self):
        self._server.shutdown()
        self._server.server_close()


def closed_port():
    """A 127.0.0.1 port with nothing listening (for upstream-unreachable tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
