"""Issue 8, item 8: a tunnel checks the SNI of the ClientHello before relaying it (domain fronting:
CONNECT to an allowed host or IP, then a ClientHello naming a denied host). The attack must fail
with nothing of the ClientHello upstream and a deny row; TLS with a matching, an allowed or no
SNI, and tunnels that are not TLS (server speaks first, client speaks first) keep working."""

import json
import socket
import ssl
import threading
import time

import pytest

from e2e_support.cli import DEFAULT_DENY_REASON, add_rule, add_sandbox, ok
from e2e_support.clients import poll_until
from e2e_support.intercept_clients import send_connect, tls_context

HEADER_TIMEOUT_MS = 800  # small, so the never-completed ClientHello test is quick
BANNER = b"220 banner.test ESMTP ready\r\n"


class Sink:
    """A plain TCP upstream on 127.0.0.1 that records every byte each connection sent it and
    whether the connection was closed; it may greet first (`banner`) and answer each chunk."""

    def __init__(self, banner=b"", reply=b""):
        self.banner, self.reply = banner, reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = []  # [{"data": bytes, "closed": bool}]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            record = {"data": b"", "closed": False}
            with self.lock:
                self.connections.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn, record):
        with conn:
            try:
                if self.banner:
                    conn.sendall(self.banner)
                while data := conn.recv(65536):
                    with self.lock:
                        record["data"] += data
                    if self.reply:
                        conn.sendall(self.reply)
            except OSError:
                pass
        with self.lock:
            record["closed"] = True

    def snapshot(self):
        with self.lock:
            return [dict(c) for c in self.connections]

    def wait_closed(self, count=1):
        return poll_until(lambda: (lambda c: c if len(c) >= count and all(x["closed"] for x in c)
                                   else None)(self.snapshot()),
                          timeout=5.0, message="the sink's connections closed")

    def close(self):
        self.listener.close()


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


@pytest.fixture
def banner_sink():
    s = Sink(banner=BANNER, reply=b"250 ok\r\n")
    yield s
    s.close()


@pytest.fixture
def rules(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    for host in ("allowed.test", "front.test", "banner.test"):
        add_rule(run_sbx, "allow", host)
    return {"deny_denied": add_rule(run_sbx, "deny", "denied.test")}


@pytest.fixture
def sni_proxy(rules, start_proxy, sink, banner_sink):
    """The proxy with front.test:443 -> the sink, banner.test:25 -> the banner sink."""
    return start_proxy({
        "resolve": {"front.test:443": f"127.0.0.1:{sink.port}",
                    "denied.test:443": f"127.0.0.1:{sink.port}",
                    "banner.test:25": f"127.0.0.1:{banner_sink.port}"},
        "limits": {"header_timeout_ms": HEADER_TIMEOUT_MS},
    })


def connect(proxy, host, port=443, proxy_user=None):
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    send_connect(raw, host, port, proxy_user)
    return raw


def client_hello(server_hostname):
    """The first flight of Python's TLS client (OpenSSL) for `server_hostname`, and the objects to
    finish the handshake by hand."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read(), tls, incoming, outgoing


def assert_closed(raw, timeout=5.0):
    """The proxy closed the tunnel: EOF (or a reset) with no bytes."""
    raw.settimeout(timeout)
    try:
        data = raw.recv(4096)
    except ConnectionResetError:
        data = b""
    assert data == b"", f"expected the tunnel closed, got {data!r}"


def tunnel_row(db, host, count=1):
    rows = db.wait_rows("SELECT * FROM decisions WHERE host = ? COLLATE NOCASE AND route = 'tunnel' "
                        "ORDER BY id",
                        (host,), count=count)
    assert len(rows) == count, rows
    return rows[-1]


def https_get(proxy, connect_host, sni, pki, connect_port=443, proxy_user=None, verify=True):
    """A real TLS client over a CONNECT tunnel: GET /echo with SNI `sni` (None: no SNI)."""
    raw = connect(proxy, connect_host, connect_port, proxy_user)
    context = tls_context(pki.ca_cert)
    if sni is None or not verify:
        context.check_hostname = False
    with context.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(b"GET /echo HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data


def assert_served(proxy, pki, upstreams):
    """Normal traffic is still served."""
    upstreams.clear()
    assert https_get(proxy, "allowed.test", "allowed.test", pki).startswith(b"HTTP/1.1 200")


# --- the attack ---

def test_sni_of_a_denied_host_behind_an_allowed_connect_is_refused(rules, sni_proxy, sink, db,
                                                                    pki, upstreams):
    raw = connect(sni_proxy, "front.test")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_context(pki.ca_cert).wrap_socket(raw, server_hostname="denied.test")
    raw.close()

    [upstream_side] = sink.wait_closed()
    assert upstream_side["data"] == b"", "no byte of the ClientHello went upstream"
    row = tunnel_row(db, "front.test")
    assert (row["method"], row["decision"], row["rule"]) == ("CONNECT", "deny", str(rules["deny_denied"])), row
    assert row["reason"].startswith(
        "SNI denied.test does not match CONNECT host front.test: denied by rule"), row["reason"]
    assert row["bytes_up"] == 0
    assert_served(sni_proxy, pki, upstreams)


def test_sni_of_an_unlisted_host_is_refused_with_the_default_deny(sni_proxy, sink, db):
    hello, *_ = client_hello("Elsewhere.Example.")
    raw = connect(sni_proxy, "front.test")
    raw.sendall(hello)
    assert_closed(raw)
    assert sink.wait_closed()[0]["data"] == b""
    row = tunnel_row(db, "front.test")
    assert row["decision"] == "deny"
    assert row["reason"] == ("SNI elsewhere.example does not match CONNECT host front.test: "
                             + DEFAULT_DENY_REASON)


def test_ip_literal_connect_is_decided_on_the_sni(rules, run_sbx, start_proxy, sink, db, pki,
                                                   upstreams):
    add_rule(run_sbx, "allow", "127.0.0.1/32")
    proxy = start_proxy()

    raw = connect(proxy, "127.0.0.1", sink.port)
    hello, *_ = client_hello("denied.test")
    raw.sendall(hello)
    assert_closed(raw)
    assert sink.wait_closed()[0]["data"] == b""
    row = tunnel_row(db, "127.0.0.1")
    assert row["decision"] == "deny"
    assert row["reason"].startswith("SNI denied.test does not match CONNECT host 127.0.0.1:")

    # An allowed SNI over the same IP-literal CONNECT works.
    reply = https_get(proxy, "127.0.0.1", "allowed.test", pki, connect_port=upstreams.https.port)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert [r.sni for r in upstreams.https.requests] == ["allowed.test"]


def test_sni_allowed_for_one_sandbox_only(rules, run_sbx, start_proxy, db, pki, upstreams):
    alice, bob = add_sandbox(run_sbx, "alice"), add_sandbox(run_sbx, "bob")
    add_rule(run_sbx, "allow", "other.test", "--sandbox", "alice")
    proxy = start_proxy()
    reply = https_get(proxy, "allowed.test", "other.test", pki, proxy_user=("alice", alice))
    assert reply.startswith(b"HTTP/1.1 200")
    assert [r.sni for r in upstreams.https.requests] == ["other.test"]

    upstreams.clear()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        https_get(proxy, "allowed.test", "other.test", pki, proxy_user=("bob", bob))
    assert upstreams.https.requests == []
    rows = db.wait_rows("SELECT * FROM decisions WHERE sandbox = 'bob' AND decision = 'deny'")
    assert rows[0]["reason"].startswith("SNI other.test does not match CONNECT host allowed.test")


def test_malformed_client_hello_is_refused(sni_proxy, sink, db, pki, upstreams):
    raw = connect(sni_proxy, "front.test")
    # A TLS handshake record whose message is a ServerHello (type 2), not a ClientHello.
    raw.sendall(b"\x16\x03\x01\x00\x2c\x02\x00\x00\x28" + b"\x03\x03" + b"\x00" * 38)
    assert_closed(raw)
    assert sink.wait_closed()[0]["data"] == b""
    row = tunnel_row(db, "front.test")
    assert row["decision"] == "deny"
    assert row["reason"] == ("TLS ClientHello refused: first handshake message is of type 2, "
                             "not ClientHello")
    assert_served(sni_proxy, pki, upstreams)


def test_client_hello_never_completed_is_closed_at_the_header_deadline(sni_proxy, sink, db):
    hello, *_ = client_hello("allowed.test")
    raw = connect(sni_proxy, "front.test")
    started = time.monotonic()
    raw.sendall(hello[:100])
    assert_closed(raw, timeout=HEADER_TIMEOUT_MS / 1000 + 5)
    elapsed = time.monotonic() - started
    assert HEADER_TIMEOUT_MS / 1000 * 0.8 <= elapsed < HEADER_TIMEOUT_MS / 1000 + 3, elapsed
    assert sink.wait_closed()[0]["data"] == b""
    row = tunnel_row(db, "front.test")
    assert row["decision"] == "deny"
    assert row["reason"] == (f"TLS ClientHello not complete within {HEADER_TIMEOUT_MS} ms "
                             "(100 bytes received)")


def test_client_hello_cut_short_by_the_client_is_refused(sni_proxy, sink, db):
    hello, *_ = client_hello("allowed.test")
    raw = connect(sni_proxy, "front.test")
    raw.sendall(hello[:60])
    raw.shutdown(socket.SHUT_WR)
    assert_closed(raw)
    assert sink.wait_closed()[0]["data"] == b""
    row = tunnel_row(db, "front.test")
    assert (row["decision"], row["reason"]) == (
        "deny", "TLS ClientHello truncated: the client closed after 60 bytes")


# --- what keeps working ---

def test_sni_equal_to_the_connect_host_works(sni_proxy, db, pki, upstreams):
    reply = https_get(sni_proxy, "Allowed.Test", "allowed.test", pki)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["path"] == "/echo"
    assert [r.sni for r in upstreams.https.requests] == ["allowed.test"]
    row = tunnel_row(db, "Allowed.Test")
    assert row["decision"] == "allow" and row["bytes_up"] > 0


def test_sni_that_differs_but_is_itself_allowed_works(rules, run_sbx, start_proxy, db, pki,
                                                      upstreams):
    add_rule(run_sbx, "allow", "other.test")
    proxy = start_proxy()
    reply = https_get(proxy, "allowed.test", "other.test", pki)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert [r.sni for r in upstreams.https.requests] == ["other.test"]
    assert tunnel_row(db, "allowed.test")["decision"] == "allow"


def test_client_hello_without_sni_is_decided_by_the_connect_host(sni_proxy, db, pki, upstreams):
    reply = https_get(sni_proxy, "allowed.test", None, pki)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    [received] = upstreams.https.requests
    assert received.sni is None
    assert tunnel_row(db, "allowed.test")["decision"] == "allow"


@pytest.mark.parametrize("sni", ["allowed.test", "denied.test"])
def test_client_hello_trickled_one_byte_at_a_time(rules, start_proxy, db, upstreams, sni):
    proxy = start_proxy()  # the default 10 s header deadline: the trickle takes about a second
    hello, tls, incoming, outgoing = client_hello(sni)
    raw = connect(proxy, "allowed.test")
    for i in range(len(hello)):
        raw.sendall(hello[i:i + 1])
        time.sleep(0.001)
    if sni == "denied.test":
        assert_closed(raw)
        row = tunnel_row(db, "allowed.test")
        assert row["decision"] == "deny"
        assert row["reason"].startswith("SNI denied.test does not match CONNECT host allowed.test")
        assert upstreams.https.requests == []
        return
    # Finish the handshake by hand over the same socket, then one request.
    raw.settimeout(10)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                raw.sendall(pending)
            data = raw.recv(65536)
            assert data, "the tunnel closed during the handshake"
            incoming.write(data)
    tls.write(b"GET /echo HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
    raw.sendall(outgoing.read())
    reply = b""
    while b"\r\n\r\n" not in reply:
        try:
            reply += tls.read(65536)
        except ssl.SSLWantReadError:
            data = raw.recv(65536)
            assert data, "the tunnel closed before the response"
            incoming.write(data)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert [r.sni for r in upstreams.https.requests] == ["allowed.test"]
    raw.close()


def test_server_speaks_first_tunnel_gets_its_banner_at_once(sni_proxy, banner_sink, db):
    raw = connect(sni_proxy, "banner.test", 25)
    raw.settimeout(5)
    started = time.monotonic()
    banner = b""
    while not banner.endswith(b"\r\n"):
        chunk = raw.recv(4096)
        assert chunk, "the tunnel closed before the banner"
        banner += chunk
    assert banner == BANNER
    assert time.monotonic() - started < HEADER_TIMEOUT_MS / 1000, "the banner was not held back"
    # A client silent for longer than the header deadline is not cut: it sent no TLS.
    time.sleep(HEADER_TIMEOUT_MS / 1000 + 0.4)
    raw.sendall(b"EHLO sandbox\r\n")
    assert raw.recv(4096) == b"250 ok\r\n"
    raw.close()
    [upstream_side] = banner_sink.wait_closed()
    assert upstream_side["data"] == b"EHLO sandbox\r\n"
    row = tunnel_row(db, "banner.test")
    assert row["decision"] == "allow"
    assert (row["bytes_up"], row["bytes_down"]) == (len(b"EHLO sandbox\r\n"),
                                                     len(BANNER) + len(b"250 ok\r\n"))


def test_client_speaks_first_non_tls_bytes_are_relayed_as_they_are(sni_proxy, sink, db):
    raw = connect(sni_proxy, "front.test")
    payload = b"SSH-2.0-OpenSSH_9.2p1\r\n" + bytes(range(256))
    raw.sendall(payload)
    poll_until(lambda: sink.snapshot() and sink.snapshot()[0]["data"] == payload, timeout=5.0,
               message="the payload upstream")
    raw.close()
    sink.wait_closed()
    row = tunnel_row(db, "front.test")
    assert row["decision"] == "allow"
    assert row["bytes_up"] == len(payload)


def test_bytes_sent_right_behind_the_connect_are_checked_too(sni_proxy, sink, db):
    """A ClientHello pipelined in the same write as the CONNECT request is checked as well."""
    hello, *_ = client_hello("denied.test")
    raw = socket.create_connection(("127.0.0.1", sni_proxy.port), timeout=10)
    raw.sendall(b"CONNECT front.test:443 HTTP/1.1\r\nHost: front.test:443\r\n\r\n" + hello)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = raw.recv(1)
        assert chunk
        head += chunk
    assert head.startswith(b"HTTP/1.1 200")
    assert_closed(raw)
    assert sink.wait_closed()[0]["data"] == b""
    assert tunnel_row(db, "front.test")["reason"].startswith("SNI denied.test does not match")
