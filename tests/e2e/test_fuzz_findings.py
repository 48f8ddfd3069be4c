"""Attacks the fuzzers found (tests/fuzz/regressions/), performed on the real binary.

chunked_relay/two-te-fields-smuggle-admin: a request with two Transfer-Encoding fields, the first
not naming chunked ("x") and the second "chunked". Beast's parser frames the body as chunked (the
last field), but the serializer looked at the first field only and wrote the decoded body raw
behind a head still saying "Transfer-Encoding: x" + "chunked": an upstream reading the body as
chunked found the end of it inside the client's data and a second request, unchecked, behind it.
"""

import socket
import threading

from e2e_support.cli import add_rule, ok
from e2e_support.clients import read_response

SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: raw.test\r\n\r\n"


class RawUpstream:
    """Records the bytes of one connection (until 1 s of silence), then answers 200 and closes."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(1)
            try:
                while chunk := conn.recv(65536):
                    self.received += chunk
            except OSError:
                pass
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def close(self):
        self.listener.close()
        self.thread.join(timeout=5)


def decode_one_chunked_request(data):
    """(head, body, rest): one request whose body is chunked, and what follows its last chunk."""
    head, _, data = data.partition(b"\r\n\r\n")
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            trailers, _, rest = data.partition(b"\r\n")  # no trailer fields: one empty line
            assert trailers == b""
            return head, body, rest
        body, data = body + data[:size], data[size + 2:]


def test_two_transfer_encoding_fields_cannot_smuggle_a_request(run_sbx, start_proxy):
    upstream = RawUpstream()
    try:
        ok(run_sbx("policy", "init", "deny-all"))
        add_rule(run_sbx, "allow", "raw.test")
        proxy = start_proxy({"resolve": {"raw.test:80": f"127.0.0.1:{upstream.port}"}})
        inner = b"0\r\n\r\n" + SMUGGLED
        request = (b"POST http://raw.test/upload HTTP/1.1\r\nHost: raw.test\r\n"
                   b"Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + f"{len(inner):x}\r\n".encode() + inner + b"\r\n0\r\n\r\n")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(request)
            response = read_response(sock, timeout=10)
    finally:
        upstream.close()

    if response.status == 400:  # refusing the request is as good: nothing reached the upstream
        assert upstream.received == b""
        return
    head, body, rest = decode_one_chunked_request(upstream.received)
    assert rest == b"", f"bytes behind the request upstream: {rest!r}"
    assert body == inner, "the upstream gets the client's body as data"
    te = [line for line in head.split(b"\r\n") if line.lower().startswith(b"transfer-encoding:")]
    assert te == [b"Transfer-Encoding: chunked"], head
