"""Requests no well-behaved client sends, on both routes: each case of one table is sent as a plain
forward request (absolute-form to http://allowed.test/...) and inside an intercepted CONNECT
(allowed.test:443, intercepted because a path rule names the host). Each must get its status at
once (400, 431 for an oversized header section) with X-Proxy-Error: bad-request and a body saying
why, close the connection (the proxy cannot know where a next request would start, RFC 9112
§11.2), reach no upstream, leave a `deny` row whose reason carries no query string, and leave the
proxy serving the next client.

The classes: PortSwigger's request smuggling (CL.TE, TE.CL, TE.TE obfuscations), RFC 9112's
framing rules (line ends, obs-fold, request line, versions, Content-Length forms, chunked coding),
Host ambiguity, fragments, size limits and Expect."""

import socket
import ssl
import time

import pytest

from e2e_support.cli import add_rule, ok
from e2e_support.clients import read_response
from e2e_support.intercept_clients import open_tunnel, read_tls_response, request_over
from e2e_support.intercept_fixtures import *  # noqa: F401,F403 - pytest fixtures

MAX_HEADER_BYTES = 8192  # configured below, so the oversized case stays small
# Far below header_timeout (10 s): a malformed head is answered at once, never waited on.
ANSWER_WITHIN_S = 4.0
# In every target: no refusal reason, response or row may repeat it (reasons never carry a
# query string).
QUERY_SECRET = b"qsecret4f1c"

ROUTES = {
    # {T}: the target as the route sends it; {A}: an absolute-form target for this route.
    "forward": {b"{T}": b"http://allowed.test/echo?tok=" + QUERY_SECRET,
                b"{A}": b"http://allowed.test/echo?tok=" + QUERY_SECRET},
    "intercept": {b"{T}": b"/echo?tok=" + QUERY_SECRET,
                  b"{A}": b"https://allowed.test/echo?tok=" + QUERY_SECRET},
}


def req(*lines, method=b"GET", version=b"HTTP/1.1", body=b"", host=True):
    """A request with CRLF line ends: request line, Host (unless host=False), `lines`, body."""
    head = [method + b" {T} " + version] + ([b"Host: allowed.test"] if host else []) + list(lines)
    return b"".join(line + b"\r\n" for line in head) + b"\r\n" + body


def post(*lines, body=b"", **kwargs):
    return req(*lines, method=b"POST", body=body, **kwargs)


CHUNKED = b"Transfer-Encoding: chunked"
SMUGGLED = b"GET /admin/smuggled HTTP/1.1\r\nHost: allowed.test\r\n\r\n"

# name: (request bytes with {T}/{A} placeholders, expected status)
CASES = {
    # --- CL.TE and TE.CL (both framings at once) ---
    "cl-te": (post(b"Content-Length: 6", CHUNKED, body=b"0\r\n\r\nG"), 400),
    "te-cl": (post(CHUNKED, b"Content-Length: 3", body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"), 400),
    "cl-te-smuggled-request": (post(b"Content-Length: %d" % (5 + len(SMUGGLED)), CHUNKED,
                                    body=b"0\r\n\r\n" + SMUGGLED), 400),
    "get-with-cl-and-te": (req(b"Content-Length: 5", CHUNKED, body=b"0\r\n\r\n"), 400),
    # --- TE.TE: a Transfer-Encoding one parser reads and another does not ---
    "te-space-before-colon": (post(b"Transfer-Encoding : chunked", b"Content-Length: 5",
                                   body=b"0\r\n\r\n"), 400),
    "te-tab-before-value-with-cl": (post(b"Transfer-Encoding:\tchunked", b"Content-Length: 5",
                                         body=b"0\r\n\r\n"), 400),
    "te-vertical-tab": (post(b"Transfer-Encoding:\x0bchunked", b"Content-Length: 5",
                             body=b"0\r\n\r\n"), 400),
    "te-form-feed": (post(b"Transfer-Encoding: chunked\x0c", b"Content-Length: 5",
                          body=b"0\r\n\r\n"), 400),
    "te-nul": (post(b"Transfer-Encoding: chunked\x00", b"Content-Length: 5", body=b"0\r\n\r\n"),
               400),
    "te-duplicate-line": (post(CHUNKED, CHUNKED, body=b"0\r\n\r\n"), 400),
    "te-chunked-then-identity": (post(CHUNKED, b"Transfer-Encoding: identity",
                                      b"Content-Length: 5", body=b"0\r\n\r\n"), 400),
    "te-chunked-on-second-line": (post(b"Transfer-Encoding: identity", CHUNKED,
                                       body=b"0\r\n\r\n"), 400),
    "te-xchunked": (post(b"Transfer-Encoding: xchunked", b"Content-Length: 5",
                         body=b"0\r\n\r\n"), 400),
    "te-obs-fold": (post(b"Transfer-Encoding:", b" chunked", b"Content-Length: 5",
                         body=b"0\r\n\r\n"), 400),
    "te-identity-chunked": (post(b"Transfer-Encoding: identity, chunked", body=b"0\r\n\r\n"), 400),
    "te-chunked-chunked": (post(b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"), 400),
    "te-chunked-with-parameter": (post(b"Transfer-Encoding: chunked;q=1", body=b"0\r\n\r\n"), 400),
    "te-quoted": (post(b'Transfer-Encoding: "chunked"', b"Content-Length: 5",
                       body=b"0\r\n\r\n"), 400),
    "te-gzip": (post(b"Transfer-Encoding: gzip", body=b"abcd"), 400),
    "te-in-http-1.0": (post(CHUNKED, version=b"HTTP/1.0", body=b"0\r\n\r\n"), 400),
    # --- Content-Length forms ---
    "cl-duplicate-equal": (post(b"Content-Length: 4", b"Content-Length: 4", body=b"abcd"), 400),
    "cl-duplicate-different": (post(b"Content-Length: 4", b"Content-Length: 5", body=b"abcde"),
                               400),
    "cl-comma-list": (post(b"Content-Length: 4, 4", body=b"abcd"), 400),
    "cl-negative": (post(b"Content-Length: -1"), 400),
    "cl-plus-sign": (post(b"Content-Length: +4", body=b"abcd"), 400),
    "cl-leading-zero": (post(b"Content-Length: 04", body=b"abcd"), 400),
    "cl-hex": (post(b"Content-Length: 0x4", body=b"abcd"), 400),
    "cl-huge": (post(b"Content-Length: 99999999999999999999999", body=b"abcd"), 400),
    "cl-space-inside": (post(b"Content-Length: 4 4", body=b"abcd"), 400),
    "cl-trailing-garbage": (post(b"Content-Length: 4x", body=b"abcd"), 400),
    # --- line ends and field syntax (RFC 9112 §2.2, §5) ---
    "bare-lf-everywhere": (b"GET {T} HTTP/1.1\nHost: allowed.test\n\n", 400),
    "bare-lf-after-a-field": (b"GET {T} HTTP/1.1\r\nHost: allowed.test\nX-A: b\r\n\r\n", 400),
    "bare-lf-ends-the-head": (b"GET {T} HTTP/1.1\r\nHost: allowed.test\r\n\n", 400),
    "bare-cr-in-value": (req(b"X-A: a\rb"), 400),
    "bare-cr-ends-a-line": (b"GET {T} HTTP/1.1\rHost: allowed.test\r\n\r\n", 400),
    "obs-fold": (req(b"X-Folded: first", b" continued"), 400),
    "obs-fold-tab": (req(b"X-Folded: first", b"\tcontinued"), 400),
    "nul-in-value": (req(b"X-A: a\x00b"), 400),
    "control-char-in-value": (req(b"X-A: a\x01b"), 400),
    "del-in-value": (req(b"X-A: a\x7fb"), 400),
    "control-char-in-name": (req(b"X\x01A: b"), 400),
    "space-in-field-name": (req(b"X A: b"), 400),
    "empty-field-name": (req(b": b"), 400),
    "field-without-colon": (req(b"X-A b"), 400),
    # --- the request line (RFC 9112 §3) ---
    "request-line-garbage": (b"GARBAGE\r\n\r\n", 400),
    "request-line-double-space": (b"GET  {T} HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 400),
    "request-line-tab": (b"GET\t{T} HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 400),
    "request-line-trailing-space": (b"GET {T} HTTP/1.1 \r\nHost: allowed.test\r\n\r\n", 400),
    "request-line-leading-space": (b" GET {T} HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 400),
    "http-0.9": (b"GET {T}\r\n", 400),  # and nothing more: no head will follow
    "version-2.0": (req(version=b"HTTP/2.0"), 400),
    "version-1.2": (req(version=b"HTTP/1.2"), 400),
    "version-1.10": (req(version=b"HTTP/1.10"), 400),
    "version-lower-case": (req(version=b"http/1.1"), 400),
    "version-garbage": (req(version=b"HTTZ/1.1"), 400),
    "method-with-invalid-chars": (req(method=b"G(T"), 400),
    "target-with-fragment": (b"GET {T}#frag HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 400),
    "target-fragment-hides-path": (b"GET {T}#/../admin/x HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
                                   400),
    "target-with-non-ascii": (b"GET {T}\xc3\xa9 HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 400),
    # --- Host (RFC 9112 §3.2) ---
    "host-differs-from-absolute-form": (b"GET {A} HTTP/1.1\r\nHost: other.test\r\n\r\n", 400),
    "host-twice": (req(b"Host: allowed.test"), 400),
    "host-twice-different": (req(b"Host: other.test"), 400),
    "host-with-userinfo": (req(b"Host: user@allowed.test", host=False), 400),
    "host-with-bad-port": (req(b"Host: allowed.test:99999", host=False), 400),
    "host-missing-on-1.1": (req(host=False), 400),
    # --- sizes ---
    "header-section-too-large": (req(b"X-Big: " + b"a" * (2 * MAX_HEADER_BYTES)), 431),
    "too-many-header-fields": (req(*[b"X-%d: v" % i for i in range(201)]), 400),
    # --- chunked request bodies (RFC 9112 §7.1) ---
    "chunk-size-not-hex": (post(CHUNKED, body=b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk-size-overflow": (post(CHUNKED, body=b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n"), 400),
    "chunk-size-negative": (post(CHUNKED, body=b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk-data-without-crlf": (post(CHUNKED, body=b"5\r\nhelloXX0\r\n\r\n"), 400),
    "chunk-ext-bare-lf": (post(CHUNKED, body=b"5;a=b\nhello\r\n0\r\n\r\n"), 400),
    "chunk-ext-too-long": (post(CHUNKED, body=b"5;" + b"a" * (80 * 1024)
                                + b"\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk-trailer-content-length": (post(CHUNKED, body=b"5\r\nhello\r\n0\r\n"
                                          b"Content-Length: 5\r\n\r\n"), 400),
    "chunk-trailer-not-a-field": (post(CHUNKED, body=b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n"),
                                  400),
    # --- Expect (RFC 9110 §10.1.1) ---
    "expect-unknown": (req(b"Expect: x-something"), 400),
    "expect-twice": (post(b"Expect: 100-continue", b"Expect: 100-continue",
                          b"Content-Length: 4", body=b"abcd"), 400),
}


@pytest.fixture
def both_routes(start_intercepting, run_sbx):
    # A path rule on allowed.test makes its CONNECTs intercepted; other.test exists so that a
    # Host naming it is refused for the mismatch, not for policy.
    add_rule(run_sbx, "deny", "allowed.test", "--path", "/admin/**")
    add_rule(run_sbx, "allow", "other.test")
    return start_intercepting({"limits": {"max_header_bytes": MAX_HEADER_BYTES}})


def fill(template, route):
    for placeholder, value in ROUTES[route].items():
        template = template.replace(placeholder, value)
    return template


def peer_closed(sock):
    """True when the peer closes `sock` within a second (EOF, close_notify or reset)."""
    sock.settimeout(1.0)
    try:
        return sock.recv(1) == b""
    except (socket.timeout, TimeoutError):
        return False
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError):
        return True


def send_and_read(proxy, route, data, sbx_ca):
    """Writes `data` whole (as a pipelining client would), reads one response; returns
    (response, closed, seconds)."""
    if route == "forward":
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=ANSWER_WITHIN_S)
    else:
        sock = open_tunnel(proxy.port, "allowed.test", sbx_ca, timeout=ANSWER_WITHIN_S)
    with sock:
        started = time.monotonic()
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # answered and closed before reading everything: read the answer
        try:
            if route == "forward":
                response = read_response(sock, timeout=ANSWER_WITHIN_S)
            else:
                response = read_tls_response(sock, timeout=ANSWER_WITHIN_S)
        except (TimeoutError, socket.timeout) as e:
            raise AssertionError(f"no answer within {ANSWER_WITHIN_S} s: the proxy waited for "
                                 "the rest of a malformed request") from e
        except (ConnectionError, ssl.SSLError) as e:
            raise AssertionError(f"the connection closed without an answer: {e!r}") from e
        elapsed = time.monotonic() - started
        closed = response.closed or peer_closed(sock)
    return response, closed, elapsed


def decision_rows(db, status):
    try:
        return db.wait_rows("SELECT * FROM decisions WHERE status = ? ORDER BY id", (status,))
    except AssertionError as e:
        every = db.rows("SELECT id, method, host, path, route, decision, status, reason "
                        "FROM decisions ORDER BY id")
        raise AssertionError(f"{e}\nall decision rows:\n" + "\n".join(map(str, every))) from None


def good_request_served(proxy, route, sbx_ca, upstream):
    if route == "forward":
        response = proxy.raw(b"GET http://allowed.test/after HTTP/1.1\r\nHost: allowed.test\r\n"
                             b"Connection: close\r\n\r\n")
    else:
        with open_tunnel(proxy.port, "allowed.test", sbx_ca) as tls:
            response = request_over(tls, "GET", "allowed.test", "/after")
    assert response.status == 200, response.raw[:300]
    assert [r.path for r in upstream.requests] == ["/after"]


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request_is_refused(both_routes, service_upstream, plain_upstream, db, sbx_ca,
                                      case, route):
    template, status = CASES[case]
    response, closed, elapsed = send_and_read(both_routes, route, fill(template, route), sbx_ca)

    assert response.status == status, response.raw[:400]
    assert response.get("X-Proxy-Error") == "bad-request", response.raw[:400]
    assert response.body.strip(), "the body says what was wrong"
    assert QUERY_SECRET not in response.raw, "the answer repeats the query string"
    assert elapsed < ANSWER_WITHIN_S
    assert closed, "after a malformed request the connection must be closed"
    assert service_upstream.requests == [] and plain_upstream.requests == [], \
        "a malformed request reached the upstream"

    rows = decision_rows(db, status)
    row = rows[-1]
    assert row["decision"] == "deny", row
    assert row["route"] == route, row
    assert row["reason"], row
    if status == 400:
        assert "bad request" in row["reason"], row
    assert not any(QUERY_SECRET.decode() in str(v) for v in row.values()), \
        f"the row carries the query string: {row}"

    # The next client is served (the upstream sees only its request).
    upstream = plain_upstream if route == "forward" else service_upstream
    good_request_served(both_routes, route, sbx_ca, upstream)


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


# --- a head trickled byte by byte is judged as soon as it is certain to be refused ---

@pytest.mark.parametrize("data", [b"GET http://allowed.test/ HTTP/1.1\nHost: allowed.test\n",
                                  b"GET http://allowed.test/\r\n"],
                         ids=["bare-lf", "http-0.9"])
def test_a_trickled_malformed_head_is_refused_without_waiting(both_routes, plain_upstream, data):
    with socket.create_connection(("127.0.0.1", both_routes.port), timeout=ANSWER_WITHIN_S) as s:
        started = time.monotonic()
        try:
            for byte in data:
                s.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the last byte: the answer is waiting
        response = read_response(s, timeout=ANSWER_WITHIN_S)
    assert response.status == 400
    assert time.monotonic() - started < ANSWER_WITHIN_S
    assert plain_upstream.requests == []


# --- blocked address ranges are named as such for IP literals too ---
# With no rule allowing the literal, policy refuses it first (blocked-by-policy, whose hint -- an
# exact allow for the address -- is what unlocks a blocked range); once a rule allows it by name,
# the range is what refuses it.

@pytest.mark.parametrize("rules,code", [("deny-all", "blocked-by-policy"),
                                        ("allow-everything", "blocked-address")])
def test_loopback_ip_literal_is_a_blocked_address(start_intercepting, run_sbx, plain_upstream,
                                                  service_upstream, db, rules, code):
    if rules == "allow-everything":
        add_rule(run_sbx, "allow", "**")
    proxy = start_intercepting()
    port = plain_upstream.port
    forward = proxy.raw(f"GET http://127.0.0.1:{port}/x?tok={QUERY_SECRET.decode()} HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    assert (forward.status, forward.get("X-Proxy-Error")) == (403, code), forward.raw
    connect = proxy.raw(f"CONNECT 127.0.0.1:{service_upstream.port} HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{service_upstream.port}\r\n\r\n".encode())
    assert (connect.status, connect.get("X-Proxy-Error")) == (403, code), connect.raw
    assert plain_upstream.requests == [] and service_upstream.requests == []
    rows = db.wait_rows("SELECT * FROM decisions WHERE host = '127.0.0.1' ORDER BY id", count=2)
    assert [r["decision"] for r in rows] == ["deny", "deny"]
    assert [r["status"] for r in rows] == [403, 403]


def test_connect_refusal_reason_carries_no_query_string(both_routes, db):
    # A CONNECT target is host:port; anything after it (a "?query") is refused without being
    # copied into the answer or the row.
    response = both_routes.raw(b"CONNECT allowed.test:443?tok=" + QUERY_SECRET + b" HTTP/1.1\r\n"
                               b"Host: allowed.test:443\r\n\r\n")
    assert response.status == 400
    assert QUERY_SECRET not in response.raw
    [row] = db.wait_rows("SELECT * FROM decisions WHERE status = 400")
    assert not any(QUERY_SECRET.decode() in str(v) for v in row.values()), row


# --- a head cut off by its deadline is answered, not just dropped ---

@pytest.mark.parametrize("route", list(ROUTES))
def test_a_head_cut_off_by_header_timeout_gets_408(start_intercepting, run_sbx, plain_upstream,
                                                   service_upstream, db, sbx_ca, route):
    add_rule(run_sbx, "deny", "allowed.test", "--path", "/admin/**")
    proxy = start_intercepting({"limits": {"header_timeout_ms": 600}})
    partial = fill(b"GET {T} HTTP/1.1\r\nHost: allowed.test\r\nX-Half: ", route)  # and no more
    if route == "forward":
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=ANSWER_WITHIN_S)
    else:
        # A kept-alive intercepted connection after one good request: the deadline applies to
        # every head, not only a connection's first.
        sock = open_tunnel(proxy.port, "allowed.test", sbx_ca, timeout=ANSWER_WITHIN_S)
        assert request_over(sock, "GET", "allowed.test", "/first").status == 200
    with sock:
        started = time.monotonic()
        sock.sendall(partial)
        read = read_response if route == "forward" else read_tls_response
        response = read(sock, timeout=ANSWER_WITHIN_S)
        elapsed = time.monotonic() - started
        assert (response.status, response.get("X-Proxy-Error")) == (408, "bad-request"), \
            response.raw[:300]
        assert 0.5 <= elapsed < 2.5, elapsed
        assert response.closed or peer_closed(sock)
    [row] = decision_rows(db, 408)
    assert (row["decision"], row["route"]) == ("deny", route)
    assert QUERY_SECRET.decode() not in (row["reason"] or "")
    upstream = plain_upstream if route == "forward" else service_upstream
    assert "/echo" not in [r.path for r in upstream.requests]


def test_a_silent_intercepted_session_is_closed_after_first_byte_timeout(start_intercepting,
                                                                         run_sbx, sbx_ca,
                                                                         service_upstream):
    add_rule(run_sbx, "deny", "allowed.test", "--path", "/admin/**")
    proxy = start_intercepting({"limits": {"first_byte_timeout_ms": 500}})
    with open_tunnel(proxy.port, "allowed.test", sbx_ca, timeout=5) as tls:
        started = time.monotonic()  # CONNECT answered, TLS up; now nothing is sent
        tls.settimeout(5)
        try:
            data = tls.recv(1)
        except (ssl.SSLError, ConnectionResetError, OSError):
            data = b""
        assert data == b"" and time.monotonic() - started < 2.5, \
            "a silent intercepted session held its slot past first_byte_timeout"
    # Kept-alive sessions may be quiet longer between requests.
    with open_tunnel(proxy.port, "allowed.test", sbx_ca, timeout=5) as tls:
        assert request_over(tls, "GET", "allowed.test", "/one").status == 200
        time.sleep(0.8)
        assert request_over(tls, "GET", "allowed.test", "/two").status == 200
