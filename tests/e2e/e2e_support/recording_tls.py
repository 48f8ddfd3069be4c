"""A local upstream that impersonates credential-service hosts (api.openai.com, api.anthropic.com,
... with the test PKI's leaf, which the proxy trusts through `upstream_ca_file`) and records every
request it receives, for the interception and injection tests.

Unlike upstream.Upstream it never echoes request headers back: what a client receives must not be
able to carry an injected secret, so the tests can check every response for it. Routes:

  /v1/status/NNN        that status, short fixed body
  /v1/sse?n=N&gap=S     200 text/event-stream, chunked; N events S seconds apart (send times are in
                        `sse_sent`, server time.monotonic())
  /v1/ws                WebSocket (RFC 6455): 101 with Sec-WebSocket-Accept, then echoes text and
                        binary frames, answers ping, closes on close
  /v1/upload            any method: counts the body (b"u" * n expected) without keeping it;
                        JSON {"received": n, "pattern_ok": bool}
  /v1/download/N        N bytes of b"d", Content-Length, streamed in 64 KiB writes
  /v1/then-close        200 JSON like the default, kept alive by its headers, then the connection
                        is closed (an upstream dropping an idle keep-alive connection)
  anything else         200 JSON {"ok": true, "seq": <index of this request>}
"""

import base64
import dataclasses
import hashlib
import http.server
import json
import ssl
import struct
import threading
import time
import urllib.parse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
# Small bodies are kept for assertions; large ones (the 50 MiB upload) are only counted.
KEEP_BODY_BYTES = 64 * 1024
IO_BLOCK = 64 * 1024


def websocket_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


@dataclasses.dataclass
class Recorded:
    method: str
    path: str  # the request target as received (origin-form, query included)
    headers: list  # [(name, value)] in the order received, duplicates kept
    body_len: int
    body: bytes  # the first KEEP_BODY_BYTES
    sni: str | None
    client_port: int
    connection: int  # serial number of the TLS/TCP connection it arrived on

    def values(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name):
        """The only value of header `name`; asserts it appears at most once."""
        found = self.values(name)
        assert len(found) <= 1, f"{name} appears {len(found)} times: {self.headers}"
        return found[0] if found else None

    def header_names(self):
        return {k.lower() for k, _ in self.headers}

    def text(self):
        """Everything received, as one string to search for placeholders and secrets."""
        lines = [f"{self.method} {self.path}"] + [f"{k}: {v}" for k, v in self.headers]
        return "\n".join(lines) + "\n" + self.body.decode("latin-1")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sbx-e2e-recording-upstream"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def setup(self):
        super().setup()
        self.connection_serial = self.server.upstream.next_connection()

    # --- bodies ---

    def _body_blocks(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, IO_BLOCK))
                    if not data:
                        raise ConnectionError("client closed inside a chunk")
                    yield data
                    remaining -= len(data)
                self.rfile.readline(8)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(remaining, IO_BLOCK))
                if not data:
                    raise ConnectionError("client closed inside the body")
                yield data
                remaining -= len(data)

    def _record(self, body_len, body):
        record = Recorded(method=self.command, path=self.path, headers=list(self.headers.items()),
                          body_len=body_len, body=body, sni=getattr(self.connection, "sni", None),
                          client_port=self.client_address[1], connection=self.connection_serial)
        return self.server.upstream.record(record)

    # --- responses ---

    def _send(self, status, body=b"", content_type="text/plain", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in extra:
            self.send_header(name, value)
        if status >= 200 and status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        else:
            self.end_headers()

    def _handle(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/v1/ws" and (self.headers.get("Upgrade") or "").lower() == "websocket":
            self._record(0, b"")
            self._websocket()
            return
        if url.path == "/v1/upload":
            count, pattern_ok = 0, True
            for block in self._body_blocks():
                count += len(block)
                pattern_ok = pattern_ok and block.count(b"u") == len(block)
            self._record(count, b"")
            self._send(200, json.dumps({"received": count, "pattern_ok": pattern_ok}).encode(),
                       "application/json")
            return
        count, kept = 0, bytearray()
        for block in self._body_blocks():
            count += len(block)
            if len(kept) < KEEP_BODY_BYTES:
                kept.extend(block[:KEEP_BODY_BYTES - len(kept)])
        seq = self._record(count, bytes(kept))
        if url.path.startswith("/v1/status/"):
            status = int(url.path.rsplit("/", 1)[1])
            self._send(status, f"status {status}\n".encode())
        elif url.path == "/v1/sse":
            self._sse(int(query.get("n", "5")), float(query.get("gap", "0.3")))
        elif url.path.startswith("/v1/download/"):
            self._download(int(url.path.rsplit("/", 1)[1]))
        elif url.path == "/v1/then-close":
            self._send(200, json.dumps({"ok": True, "seq": seq}).encode(), "application/json")
            self.close_connection = True
        else:
            self._send(200, json.dumps({"ok": True, "seq": seq}).encode(), "application/json")

    def _sse(self, count, gap):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        for i in range(count):
            if i:
                time.sleep(gap)
            sent = time.monotonic()
            self.server.upstream.note_sse(i, sent)
            data = f"event: tick\ndata: {{\"i\": {i}, \"t\": {sent:.6f}}}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _download(self, count):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(count))
        self.end_headers()
        block = b"d" * IO_BLOCK
        while count:
            n = min(count, IO_BLOCK)
            self.wfile.write(block[:n])
            count -= n
        self.wfile.flush()

    # --- WebSocket (RFC 6455), just enough for an echo ---

    def _websocket(self):
        key = self.headers.get("Sec-WebSocket-Key") or ""
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", websocket_accept(key))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            frame = read_ws_frame(self.rfile)
            if frame is None:
                return
            opcode, payload, masked = frame
            self.server.upstream.note_ws_frame(opcode, payload, masked)
            if opcode in (0x1, 0x2):
                self.wfile.write(ws_frame(opcode, payload))
            elif opcode == 0x9:
                self.wfile.write(ws_frame(0xA, payload))
            elif opcode == 0x8:
                self.wfile.write(ws_frame(0x8, payload[:2]))
                self.wfile.flush()
                return
            self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_HEAD = _handle


def read_exact(stream, n):
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_ws_frame(stream):
    """(opcode, payload, was_masked) of the next frame read from a file-like `stream`, or None at
    end of stream. Fragmented messages are not needed by the tests."""
    head = read_exact(stream, 2)
    if head is None:
        return None
    opcode = head[0] & 0x0F
    masked = bool(head[1] & 0x80)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", read_exact(stream, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", read_exact(stream, 8))[0]
    mask = read_exact(stream, 4) if masked else None
    payload = read_exact(stream, length) if length else b""
    if payload is None:
        return None
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload, masked


def ws_frame(opcode, payload, mask=None):
    """One final frame; `mask` (4 bytes) for client-to-server frames."""
    head = bytes([0x80 | opcode])
    flag = 0x80 if mask else 0
    if len(payload) < 126:
        head += bytes([flag | len(payload)])
    elif len(payload) < 1 << 16:
        head += bytes([flag | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", len(payload))
    if mask:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, upstream, tls_context):
        self.upstream = upstream
        self.tls_context = tls_context
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request, client_address):
        if self.tls_context is not None:
            request.settimeout(10)
            try:
                request = self.tls_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self.upstream.record_handshake_failure(repr(e))
                return
            self.upstream.record_handshake()
        request.settimeout(30)
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass


class RecordingUpstream:
    """An HTTPS (or, without a certificate, plain HTTP) server on 127.0.0.1:<free port>."""

    def __init__(self, cert=None, key=None):
        context = None
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(cert), str(key))

            def remember_sni(ssl_socket, server_name, _context):
                ssl_socket.sni = server_name

            context.sni_callback = remember_sni
        self.tls = context is not None
        self._lock = threading.Lock()
        self._connections = 0
        self._requests = []
        self._handshakes = 0
        self._handshake_failures = []
        self._sse_sent = {}
        self._ws_frames = []
        self._server = _Server(self, context)
        self.port = self._server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"recording-upstream-{self.port}")
        self._thread.start()

    # --- recording (called from handler threads) ---

    def next_connection(self):
        with self._lock:
            self._connections += 1
            return self._connections

    def record(self, request):
        with self._lock:
            self._requests.append(request)
            return len(self._requests) - 1

    def record_handshake(self):
        with self._lock:
            self._handshakes += 1

    def record_handshake_failure(self, reason):
        with self._lock:
            self._handshake_failures.append(reason)

    def note_sse(self, index, sent):
        with self._lock:
            self._sse_sent[index] = sent

    def note_ws_frame(self, opcode, payload, masked):
        with self._lock:
            self._ws_frames.append((opcode, payload, masked))

    # --- what the tests read ---

    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    @property
    def connections(self):
        with self._lock:
            return self._connections

    @property
    def handshakes(self):
        with self._lock:
            return self._handshakes

    @property
    def handshake_failures(self):
        with self._lock:
            return list(self._handshake_failures)

    @property
    def sse_sent(self):
        with self._lock:
            return dict(self._sse_sent)

    @property
    def ws_frames(self):
        with self._lock:
            return list(self._ws_frames)

    def clear(self):
        with self._lock:
            self._requests.clear()
            self._handshake_failures.clear()
            self._handshakes = 0
            self._connections = 0
            self._sse_sent.clear()
            self._ws_frames.clear()

    def close(self):
        self._server.shutdown()
        self._server.server_close()
