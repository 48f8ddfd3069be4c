"""Only `Upgrade: websocket` is relayed (issue 8, item 4). After a 101 a connection is a raw pipe
that no rule sees and no row records, so an upgrade to anything else (h2c above all) must never
happen: the Upgrade is removed from the request (a hop-by-hop field), and a 101 the upstream sends
anyway is a bad response (502, connection closed). Both routes, against a local upstream that
WOULD switch: it answers 101 to any Upgrade (and to /switch-anyway) and then echoes raw bytes."""

import socket
import ssl
import threading
import time

import pytest

from e2e_support.cli import add_rule, ok
from e2e_support.clients import read_response
from e2e_support.intercept_clients import open_tunnel, read_tls_response

H2C_REQUEST = ("GET {target} HTTP/1.1\r\nHost: allowed.test\r\n"
               "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")


class SwitchingUpstream:
    """HTTP/1.1 (TLS when given a certificate) on 127.0.0.1: records each request head; answers
    101 to any request with an Upgrade field or to /switch-anyway, then echoes raw bytes until the
    peer closes; else 200 "plain" and keeps the connection for the next request."""

    def __init__(self, cert=None, key=None):
        self.context = None
        if cert:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(str(cert), str(key))
        self.heads = []
        self.echoed = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.server.close()

    def clear(self):
        with self.lock:
            self.heads.clear()
            self.echoed = 0

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(10)
            if self.context:
                conn = self.context.wrap_socket(conn, server_side=True)
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                text = head.decode("latin-1")
                with self.lock:
                    self.heads.append(text)
                fields = {line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip()
                          for line in text.split("\r\n")[1:] if ":" in line}
                path = text.split(" ")[1]
                if "upgrade" in fields or path.startswith("/switch-anyway"):
                    protocol = fields.get("upgrade", "h2c")
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                 b"Upgrade: " + protocol.encode() + b"\r\n\r\nRAW-AFTER-101")
                    if data:
                        conn.sendall(data)
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        with self.lock:
                            self.echoed += len(chunk)
                        conn.sendall(chunk)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


@pytest.fixture(scope="module")
def switching_pair(pki):
    plain, tls = SwitchingUpstream(), SwitchingUpstream(pki.leaf_cert, pki.leaf_key)
    yield plain, tls
    plain.close()
    tls.close()


@pytest.fixture
def switching(switching_pair, start_proxy, run_sbx):
    plain, tls = switching_pair
    plain.clear()
    tls.clear()
    ok(run_sbx("policy", "init", "deny-all"))
    add_rule(run_sbx, "allow", "allowed.test")
    # Denied paths (and interception of allowed.test's CONNECTs, which path rules force).
    add_rule(run_sbx, "deny", "allowed.test", "--path", "/admin/**")
    proxy = start_proxy({"resolve": {"allowed.test:80": plain.address,
                                     "allowed.test:443": tls.address}})
    return proxy, plain, tls


class Route:
    """One client connection on a route: `send` raw bytes, `response()` reads one response."""

    def __init__(self, route, proxy, ca):
        self.route = route
        if route == "forward":
            self.sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        else:
            self.sock = open_tunnel(proxy.port, "allowed.test", ca, timeout=5)

    def target(self, path):
        return f"http://allowed.test{path}" if self.route == "forward" else path

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def response(self):
        if self.route == "forward":
            return read_response(self.sock, timeout=5)
        return read_tls_response(self.sock, timeout=5)

    def close(self):
        self.sock.close()


def rows(db, where, params=(), count=1):
    return db.wait_rows(f"SELECT * FROM decisions WHERE {where} ORDER BY id", params, count=count)


@pytest.mark.parametrize("route", ["forward", "intercept"])
def test_h2c_upgrade_is_removed_and_the_next_request_is_still_decided(switching, sbx_home, db,
                                                                      route):
    proxy, plain, tls = switching
    upstream = plain if route == "forward" else tls
    client = Route(route, proxy, sbx_home / "ca.pem")
    try:
        client.send(H2C_REQUEST.format(target=client.target("/public")))
        first = client.response()
        assert first.status == 200, first.raw[:300]
        assert first.body == b"plain"
        assert b"RAW-AFTER-101" not in first.raw
        # The upstream never saw the upgrade, so it could not switch.
        [head] = upstream.heads
        assert "upgrade" not in head.lower(), head
        assert "http2-settings" not in head.lower(), head
        # The connection is still HTTP, decided request by request.
        client.send(f"GET {client.target('/admin/secret')} HTTP/1.1\r\nHost: allowed.test\r\n"
                    f"\r\n")
        second = client.response()
        assert second.status == 403, second.raw[:300]
        assert second.get("X-Proxy-Error") == "blocked-by-policy"
        client.send(f"GET {client.target('/public2')} HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        assert client.response().status == 200
    finally:
        client.close()
    assert len(upstream.heads) == 2 and upstream.echoed == 0
    [denied] = rows(db, "path = '/admin/secret'")
    assert (denied["decision"], denied["status"], denied["route"]) == ("deny", 403, route)
    assert [r["status"] for r in rows(db, "path LIKE '/public%'", count=2)] == [200, 200]


@pytest.mark.parametrize("upgrade", ["h2c", "websocket, h2c", "TLS/1.0"])
def test_other_upgrade_tokens_are_removed(switching, upgrade):
    proxy, plain, _ = switching
    response = proxy.raw(f"GET http://allowed.test/x HTTP/1.1\r\nHost: allowed.test\r\n"
                         f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n\r\n".encode())
    assert response.status == 200
    [head] = plain.heads
    assert "upgrade" not in head.lower(), head


@pytest.mark.parametrize("route", ["forward", "intercept"])
def test_a_101_nobody_asked_for_is_502_not_a_pipe(switching, sbx_home, db, route):
    proxy, plain, tls = switching
    upstream = plain if route == "forward" else tls
    client = Route(route, proxy, sbx_home / "ca.pem")
    try:
        client.send(f"GET {client.target('/switch-anyway')} HTTP/1.1\r\nHost: allowed.test\r\n"
                    f"\r\n")
        response = client.response()
        assert response.status == 502, response.raw[:300]
        assert response.get("X-Proxy-Error") == "upstream-unreachable"
        assert b"RAW-AFTER-101" not in response.raw
        # Nothing more passes on this connection: it is closed, not a pipe.
        try:
            client.send(b"GET /admin/secret HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
            time.sleep(0.3)
        except (OSError, ssl.SSLError):
            pass
    finally:
        client.close()
    assert upstream.echoed == 0, "bytes were piped after an unasked-for 101"
    [row] = rows(db, "path = '/switch-anyway'")
    assert row["status"] == 502


@pytest.mark.parametrize("route", ["forward", "intercept"])
def test_websocket_after_101_is_one_row_with_bytes_and_duration(switching, sbx_home, db, route):
    proxy, plain, tls = switching
    upstream = plain if route == "forward" else tls
    client = Route(route, proxy, sbx_home / "ca.pem")
    try:
        client.send(f"GET {client.target('/ws')} HTTP/1.1\r\nHost: allowed.test\r\n"
                    "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    "\r\n")
        got = b""
        while b"RAW-AFTER-101" not in got:
            chunk = client.sock.recv(65536)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 101 ")
        payload = b"x" * 10000
        client.send(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = client.sock.recv(65536)
            assert chunk
            echoed += chunk
        assert echoed == payload
        time.sleep(0.5)  # the row's duration covers the whole stream, not the handshake
    finally:
        client.close()
    [row] = rows(db, "path = '/ws'")
    assert (row["status"], row["decision"], row["route"]) == (101, "allow", route)
    assert row["bytes_up"] >= len(payload)
    assert row["bytes_down"] >= len(payload)
    assert row["duration_ms"] >= 500
    assert upstream.echoed == len(payload)
