"""Requests no well-behaved client sends: each gets 400 (431 for an oversized header section) with
X-Proxy-Error: bad-request, reaches no upstream, leaves a decisions row, and does not disturb the
next client."""

import socket

import pytest

from e2e_support.cli import add_rule, ok
from e2e_support.clients import read_response

MAX_HEADER_BYTES = 8192  # configured below, so the oversized case stays small

GOOD = (b"GET http://allowed.test/echo HTTP/1.1\r\nHost: allowed.test\r\n"
        b"Connection: close\r\n\r\n")


def request(*header_lines, start=b"GET http://allowed.test/echo HTTP/1.1", body=b""):
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in header_lines) + b"\r\n" + body


# (request bytes, expected status, is a framing error: the proxy cannot know where the next
# request would start, so it must close the connection, RFC 9112 §11.2)
CASES = {
    "bad-request-line": (b"GARBAGE\r\n\r\n", 400, True),
    "bad-http-version": (request(b"Host: allowed.test", start=b"GET http://allowed.test/echo "
                                 b"HTTZ/1.1"), 400, True),
    "content-length-and-chunked": (request(
        b"Host: allowed.test", b"Content-Length: 4", b"Transfer-Encoding: chunked",
        start=b"POST http://allowed.test/echo HTTP/1.1", body=b"0\r\n\r\n"), 400, True),
    "two-different-content-lengths": (request(
        b"Host: allowed.test", b"Content-Length: 4", b"Content-Length: 5",
        start=b"POST http://allowed.test/echo HTTP/1.1", body=b"abcde"), 400, True),
    "invalid-content-length": (request(
        b"Host: allowed.test", b"Content-Length: 4x",
        start=b"POST http://allowed.test/echo HTTP/1.1", body=b"abcd"), 400, True),
    "negative-content-length": (request(
        b"Host: allowed.test", b"Content-Length: -1",
        start=b"POST http://allowed.test/echo HTTP/1.1"), 400, True),
    "obs-fold": (request(b"Host: allowed.test", b"X-Folded: first", b" continued"), 400, True),
    "control-character-in-value": (request(b"Host: allowed.test", b"X-Bad: a\x01b"), 400, True),
    "host-differs-from-absolute-form": (request(b"Host: other.test"), 400, False),
    "connect-without-port": (request(b"Host: allowed.test",
                                     start=b"CONNECT allowed.test HTTP/1.1"), 400, False),
    "header-section-too-large": (request(b"Host: allowed.test",
                                         b"X-Big: " + b"a" * (2 * MAX_HEADER_BYTES)), 431, True),
}


@pytest.fixture
def strict_proxy(run_sbx, start_proxy):
    ok(run_sbx("policy", "init", "deny-all"))
    add_rule(run_sbx, "allow", "allowed.test")
    add_rule(run_sbx, "allow", "other.test")
    return start_proxy({"limits": {"max_header_bytes": MAX_HEADER_BYTES}})


def send_all_then_read(port, data):
    """The whole request is written before anything is read, as a pipelining client would."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy may answer and close before reading everything; read its answer
        try:
            return read_response(sock, timeout=5)
        except ConnectionResetError as e:
            raise AssertionError(
                "connection reset before the error response could be read: close the client "
                "connection gracefully (shutdown the send side and drain) after an error") from e


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request_is_rejected(strict_proxy, upstreams, db, case):
    data, status, framing_error = CASES[case]
    response = send_all_then_read(strict_proxy.port, data)
    assert response.status == status, response.raw[:300]
    assert response.get("X-Proxy-Error") == "bad-request"
    assert response.body, "the body says what was wrong"
    if framing_error:
        assert response.closed, "after a framing error the connection must be closed"
    assert upstreams.received() == []

    rows = db.wait_rows("SELECT * FROM decisions WHERE status = ?", (status,))
    assert rows[-1]["decision"] == "deny"

    # A normal request on a fresh connection is unaffected.
    assert strict_proxy.raw(GOOD).status == 200
    assert [r.path for r in upstreams.http.requests] == ["/echo"]


def test_smuggled_request_never_reaches_the_upstream(strict_proxy, upstreams):
    # CL.TE desync attempt: a front end honouring Content-Length would forward the inner request
    # as part of the body; one honouring chunked would see it as a second request.
    inner = b"GET http://allowed.test/smuggled HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    body = b"0\r\n\r\n" + inner
    data = request(b"Host: allowed.test", f"Content-Length: {len(body)}".encode(),
                   b"Transfer-Encoding: chunked",
                   start=b"POST http://allowed.test/echo HTTP/1.1", body=body)
    response = send_all_then_read(strict_proxy.port, data)
    assert response.status == 400
    assert response.get("X-Proxy-Error") == "bad-request"
    assert response.closed
    assert upstreams.received() == []


def test_transfer_encoding_other_than_chunked_is_refused(strict_proxy, upstreams):
    # RFC 9112 §6.3: a request whose final transfer coding is not chunked has no reliable length.
    data = request(b"Host: allowed.test", b"Transfer-Encoding: gzip",
                   start=b"POST http://allowed.test/echo HTTP/1.1", body=b"abcd")
    response = send_all_then_read(strict_proxy.port, data)
    assert response.status == 400
    assert response.get("X-Proxy-Error") == "bad-request"
    assert upstreams.received() == []


def test_origin_form_request_is_not_a_proxy_request(strict_proxy, upstreams):
    # A proxy serves absolute-form and CONNECT; "GET /path" names no destination.
    response = send_all_then_read(strict_proxy.port, request(b"Host: allowed.test",
                                                             start=b"GET /echo HTTP/1.1"))
    assert 400 <= response.status < 500
    assert response.get("X-Proxy-Error") == "bad-request"
    assert upstreams.received() == []
