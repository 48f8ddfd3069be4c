"""Attacks on the request pipeline that both routes share (forwarded plain HTTP and requests inside an
intercepted TLS session): TRACE fishing for the injected credential, Max-Forwards, a '#fragment'
that hides part of the path from policy, and path forms the upstream could read differently from
the proxy. Each attack is performed for real; the assertions are what the upstream received, what
the client got back, and the row."""

import base64

import pytest

from e2e_support.cli import add_rule, add_sandbox, ok
from e2e_support.intercept_clients import PLACEHOLDER, open_tunnel, request_over
from e2e_support.intercept_fixtures import *  # noqa: F401,F403 - pytest fixtures


def rows(db, where, params=(), count=1):
    return db.wait_rows(f"SELECT * FROM decisions WHERE {where} ORDER BY id", params, count=count)


@pytest.fixture
def openai_key(secrets, new_key):
    key = new_key("openai")
    secrets.set("openai", key)
    return key


def header_values(recorded, name):
    return [v for k, v in recorded.headers if k.lower() == name.lower()]


# --- TRACE never receives a credential (RFC 9110 §9.3.8) ---

def test_trace_to_a_credential_host_is_refused_and_the_connection_goes_on(
        start_intercepting, openai_key, service_upstream, sbx_ca, db):
    proxy = start_intercepting()
    tls = open_tunnel(proxy.port, "api.openai.com", sbx_ca)
    try:
        r = request_over(tls, "TRACE", "api.openai.com", "/v1/models",
                         headers=[("Authorization", f"Bearer {PLACEHOLDER}")])
        assert r.status == 405, r
        assert r.get("X-Proxy-Error") == "method-not-allowed"
        assert openai_key.encode() not in r.raw
        assert service_upstream.requests == [], "TRACE reached the upstream"
        # Same connection: an ordinary request still gets the key.
        r = request_over(tls, "GET", "api.openai.com", "/v1/models",
                         headers=[("Authorization", f"Bearer {PLACEHOLDER}")])
        assert r.status == 200, r
    finally:
        tls.close()
    [got] = service_upstream.requests
    assert got.method == "GET"
    assert header_values(got, "Authorization") == [f"Bearer {openai_key}"]
    [row] = rows(db, "method = 'TRACE'")
    assert (row["decision"], row["status"], row["route"]) == ("deny", 405, "intercept")
    assert not row["credential"]


def test_trace_to_an_intercepted_host_without_credential_is_forwarded_unchanged(
        start_intercepting, run_sbx, service_upstream, sbx_ca, db):
    # allowed.test is intercepted (a path rule), but has no credential service.
    add_rule(run_sbx, "allow", "allowed.test", "--path", "/**")
    proxy = start_intercepting()
    tls = open_tunnel(proxy.port, "allowed.test", sbx_ca)
    try:
        r = request_over(tls, "TRACE", "allowed.test", "/echo", headers=[("X-Mine", "1")])
    finally:
        tls.close()
    assert r.status == 200, r
    [got] = service_upstream.requests
    assert got.method == "TRACE"
    assert not header_values(got, "Authorization")


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS"])
def test_max_forwards_zero_is_answered_by_the_proxy_on_the_forward_route(
        method, run_sbx, start_proxy, upstreams, db):
    ok(run_sbx("policy", "init", "deny-all"))
    add_rule(run_sbx, "allow", "allowed.test")
    proxy = start_proxy()
    token = add_sandbox(run_sbx, "box")
    auth = base64.b64encode(f"box:{token}".encode()).decode()
    request = (f"{method} http://allowed.test/echo HTTP/1.1\r\nHost: allowed.test\r\n"
               f"Max-Forwards: 0\r\nProxy-Authorization: Basic {auth}\r\n"
               "X-Mine: yes\r\nConnection: close\r\n\r\n").encode()
    r = proxy.raw(request)
    assert r.status == 200, r
    assert upstreams.http.requests == [], "Max-Forwards: 0 was forwarded"
    if method == "TRACE":
        assert r.get("Content-Type") == "message/http"
        assert b"X-Mine: yes" in r.body
        # The proxy's own credential is not reflected.
        assert auth.encode() not in r.body and b"Proxy-Authorization" not in r.body
    else:
        assert "OPTIONS" in r.get("Allow")
    [row] = rows(db, "method = ?", (method,))
    assert (row["decision"], row["status"]) == ("allow", 200)
    assert "Max-Forwards" in row["reason"]


def test_max_forwards_is_decremented_when_forwarded(start_intercepting, run_sbx,
                                                    service_upstream, sbx_ca):
    add_rule(run_sbx, "allow", "allowed.test", "--path", "/**")
    proxy = start_intercepting()
    tls = open_tunnel(proxy.port, "allowed.test", sbx_ca)
    try:
        r = request_over(tls, "OPTIONS", "allowed.test", "/echo", headers=[("Max-Forwards", "3")])
        assert r.status == 200, r
        r = request_over(tls, "OPTIONS", "allowed.test", "/echo", headers=[("Max-Forwards", "0")])
        assert r.status == 200 and r.get("Server") == "sbx-proxy", r
    finally:
        tls.close()
    [got] = service_upstream.requests
    assert header_values(got, "Max-Forwards") == ["2"]


def test_max_forwards_zero_to_a_denied_host_is_still_denied(run_sbx, start_proxy, upstreams, db):
    ok(run_sbx("policy", "init", "deny-all"))
    proxy = start_proxy()
    r = proxy.raw(b"TRACE http://other.test/ HTTP/1.1\r\nHost: other.test\r\n"
                  b"Max-Forwards: 0\r\nConnection: close\r\n\r\n")
    assert r.status == 403 and r.get("X-Proxy-Error") == "blocked-by-policy", r
    [row] = rows(db, "method = 'TRACE'")
    assert row["decision"] == "deny"


# --- a fragment in the request target is malformed on every route ---

def test_fragment_in_a_forwarded_target_is_a_400(run_sbx, start_proxy, upstreams, db):
    ok(run_sbx("policy", "init", "deny-all"))
    add_rule(run_sbx, "allow", "allowed.test")
    ok(run_sbx("policy", "deny", "network", "allowed.test", "--path", "/admin/**"))
    proxy = start_proxy()
    r = proxy.raw(b"GET http://allowed.test/public#/../admin/x HTTP/1.1\r\n"
                  b"Host: allowed.test\r\nConnection: close\r\n\r\n")
    assert r.status == 400 and r.get("X-Proxy-Error") == "bad-request", r
    assert upstreams.http.requests == []
    [row] = rows(db, "status = 400")
    assert row["decision"] == "deny" and "fragment" in row["reason"]
    # The next request is served.
    r = proxy.raw(b"GET http://allowed.test/echo HTTP/1.1\r\nHost: allowed.test\r\n"
                  b"Connection: close\r\n\r\n")
    assert r.status == 200, r


def test_fragment_in_an_intercepted_target_is_a_400(start_intercepting, run_sbx,
                                                    service_upstream, sbx_ca, db):
    add_rule(run_sbx, "allow", "allowed.test", "--path", "/public/**")
    ok(run_sbx("policy", "deny", "network", "allowed.test", "--path", "/admin/**"))
    proxy = start_intercepting()
    tls = open_tunnel(proxy.port, "allowed.test", sbx_ca)
    try:
        r = request_over(tls, "GET", "allowed.test", "/public#/../admin/x")
    finally:
        tls.close()
    assert r.status == 400 and r.get("X-Proxy-Error") == "bad-request", r
    assert service_upstream.requests == []
    [row] = rows(db, "status = 400")
    assert (row["decision"], row["route"]) == ("deny", "intercept")
    tls = open_tunnel(proxy.port, "allowed.test", sbx_ca)
    try:
        assert request_over(tls, "GET", "allowed.test", "/public/x").status == 200
    finally:
        tls.close()


# --- what is forwarded is the path policy decided on ---

@pytest.mark.parametrize("sent, forwarded", [
    ("/a/./b/../c%7e?x=1", "/a/c~?x=1"),
    ("/public/%2e%2e/admin", "/admin"),
    ("//public///x", "/public/x"),
])
def test_the_forwarded_path_is_the_normal_form_policy_saw(sent, forwarded, run_sbx, start_proxy,
                                                          upstreams, db):
    ok(run_sbx("policy", "init", "deny-all"))
    add_rule(run_sbx, "allow", "allowed.test")
    proxy = start_proxy()
    r = proxy.raw(f"GET http://allowed.test{sent} HTTP/1.1\r\nHost: allowed.test\r\n"
                  "Connection: close\r\n\r\n".encode())
    assert r.status in (200, 404), r
    [got] = upstreams.http.requests
    assert got.path == forwarded
    [row] = rows(db, "route = 'forward'")
    assert row["path"] == forwarded.split("?")[0]


def test_a_dot_dot_cannot_walk_out_of_an_allowed_prefix(start_intercepting, run_sbx,
                                                        service_upstream, sbx_ca, db):
    ok(run_sbx("policy", "deny", "network", "allowed.test", "--path", "/admin/**"))
    proxy = start_intercepting()
    tls = open_tunnel(proxy.port, "allowed.test", sbx_ca)
    try:
        r = request_over(tls, "GET", "allowed.test", "/public/%2e%2e/admin/x")
        assert r.status == 403 and r.get("X-Proxy-Error") == "blocked-by-policy", r
        r = request_over(tls, "GET", "allowed.test", "/public/./x/../echo")
        assert r.status == 200, r
    finally:
        tls.close()
    [got] = service_upstream.requests
    assert got.path == "/public/echo"
    [denied] = rows(db, "status = 403")
    assert denied["path"] == "/admin/x"
