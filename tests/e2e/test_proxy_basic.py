"""The proxy with real clients: forwarding, tunnels, policy denials, blocked addresses, live rule
changes, streaming, the decision log and a clean stop."""

import http.client
import json
import os
import ssl
import stat
import time

import pytest

from e2e_support.cli import (DECISION_COLUMNS, DEFAULT_DENY_REASON, SUMMARY_COLUMNS, TS_RE,
                             add_rule, failure, ok)
from e2e_support.clients import poll_until
from e2e_support.tables import parse_table
from e2e_support.upstream import CHUNK_COUNT

# Hop-by-hop and proxy-only headers that must never reach an upstream (RFC 9110 §7.6.1).
NOT_FORWARDED = {"proxy-connection", "proxy-authorization", "keep-alive", "x-hop"}
LIVE_CHANGE_LIMIT_S = 1.5  # the contract says one second; allow for the poll itself


@pytest.fixture
def deny_all(run_sbx):
    """Only the rules the test adds."""
    ok(run_sbx("policy", "init", "deny-all"))


@pytest.fixture
def allowed_rule(run_sbx, deny_all):
    return add_rule(run_sbx, "allow", "allowed.test")


def row_for(db, where, params=(), count=1):
    rows = db.wait_rows(f"SELECT * FROM decisions WHERE {where} ORDER BY id", params, count=count)
    assert len(rows) == count, rows
    return rows[-1] if count == 1 else rows


def get_request(host, path="/echo", extra=b""):
    return (f"GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n".encode() + extra +
            b"Connection: close\r\n\r\n")


# --- forwarding and tunnels ---

def test_plain_http_is_forwarded_without_hop_by_hop_headers(allowed_rule, proxy, upstreams, db):
    r = proxy.curl("http://allowed.test/echo?x=1", "-H", "X-Test: yes", "-H",
                   "Connection: X-Hop", "-H", "X-Hop: must-not-pass", "-H", "Keep-Alive: 5")
    assert (r.rc, r.status) == (0, 200), r
    echo = json.loads(r.body)
    assert echo["path"] == "/echo?x=1", "origin-form with the query upstream"

    [received] = upstreams.http.requests
    assert received.method == "GET"
    assert received.path == "/echo?x=1"
    assert received.header("Host") == "allowed.test"
    assert received.header("X-Test") == "yes"
    assert not received.header_names() & NOT_FORWARDED, received.headers
    assert r.headers.get("X-Proxy-Error") is None

    row = row_for(db, "host = ?", ("allowed.test",))
    assert set(row) >= DECISION_COLUMNS
    assert TS_RE.match(row["ts"]), row["ts"]
    assert row["client"].startswith("127.0.0.1:")
    expected = {"sandbox": "", "method": "GET", "scheme": "http", "port": 80, "path": "/echo",
                "route": "forward", "decision": "allow", "rule": str(allowed_rule),
                "credential": "", "status": 200}
    actual = {k: row[k] for k in expected}
    actual["sandbox"] = actual["sandbox"] or ""  # NULL or "" both mean "no sandbox"
    actual["credential"] = actual["credential"] or ""
    assert actual == expected
    assert row["bytes_down"] >= len(r.body)
    assert row["duration_ms"] >= 0


def test_connect_tunnel_to_an_allowed_host(allowed_rule, proxy, upstreams, pki, db):
    r = proxy.curl("https://allowed.test/echo", "--cacert", pki.ca_cert)
    assert (r.rc, r.connect_status, r.status) == (0, 200, 200), r
    [received] = upstreams.https.requests
    assert received.sni == "allowed.test"
    assert received.path == "/echo"

    row = row_for(db, "host = ?", ("allowed.test",))
    assert (row["method"], row["port"], row["route"], row["decision"], row["rule"]) == \
        ("CONNECT", 443, "tunnel", "allow", str(allowed_rule))
    assert row["bytes_up"] > 0 and row["bytes_down"] > 0, "tunnel bytes are counted"


def test_keep_alive_serves_several_requests_on_one_connection(allowed_rule, proxy, upstreams):
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        for i in range(3):
            connection.request("GET", f"http://allowed.test/echo?n={i}")
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["path"] == f"/echo?n={i}"
    finally:
        connection.close()
    assert [r.path for r in upstreams.http.requests] == [f"/echo?n={i}" for i in range(3)]


def test_request_bodies_are_relayed_in_full(allowed_rule, proxy, upstreams, tmp_path, pki):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    r = proxy.curl("http://allowed.test/upload", "--data-binary", f"@{payload}")
    assert r.status == 200, r
    assert json.loads(r.body) == {"received": payload.stat().st_size}
    r = proxy.curl("http://allowed.test/upload", "-H", "Transfer-Encoding: chunked",
                   "--data-binary", f"@{payload}")
    assert json.loads(r.body) == {"received": payload.stat().st_size}
    r = proxy.curl("http://allowed.test/bytes/5000000")
    assert (r.status, len(r.body)) == (200, 5000000)
    r = proxy.curl("http://allowed.test/status/404")
    assert r.status == 404 and r.headers.get("X-Proxy-Error") is None


# --- denials ---

@pytest.mark.parametrize("with_deny_rule", [False, True])
def test_denied_host_gets_403_over_http_and_connect(run_sbx, deny_all, start_proxy, upstreams,
                                                    db, with_deny_rule):
    if with_deny_rule:
        add_rule(run_sbx, "allow", "**.test")
        rule = str(add_rule(run_sbx, "deny", "other.test"))
    else:
        rule = "default"
    proxy = start_proxy()

    r = proxy.curl("http://other.test/echo")
    assert r.status == 403
    assert r.headers.get("X-Proxy-Error") == "blocked-by-policy"
    assert "other.test" in r.text, "the body says what was blocked"

    r = proxy.curl("https://other.test/echo")
    assert r.rc != 0 and r.connect_status == 403, r
    assert r.block_with_status(403).get("X-Proxy-Error") == "blocked-by-policy"

    assert upstreams.received() == [] and upstreams.https.handshake_failures == []
    forward, tunnel = row_for(db, "host = ?", ("other.test",), count=2)
    assert (forward["method"], forward["route"], forward["decision"], forward["rule"],
            forward["status"], forward["port"]) == ("GET", "forward", "deny", rule, 403, 80)
    assert (tunnel["method"], tunnel["route"], tunnel["decision"], tunnel["rule"],
            tunnel["status"], tunnel["port"]) == ("CONNECT", "tunnel", "deny", rule, 403, 443)
    if rule == "default":
        assert forward["reason"] == DEFAULT_DENY_REASON
    else:
        assert f"rule {rule}" in forward["reason"]


def test_loopback_answer_is_refused_unless_the_host_is_named_exactly(run_sbx, deny_all,
                                                                     start_proxy, upstreams, db):
    # private.test resolves (through the config's resolve map) to 127.0.0.1.
    add_rule(run_sbx, "allow", "**.test")
    proxy = start_proxy()

    r = proxy.curl("http://private.test/echo")
    assert r.status == 403
    assert r.headers.get("X-Proxy-Error") == "blocked-address"
    r = proxy.curl("https://private.test/echo")
    assert r.connect_status == 403
    assert r.block_with_status(403).get("X-Proxy-Error") == "blocked-address"
    assert upstreams.received() == []
    rows = row_for(db, "host = ?", ("private.test",), count=2)
    assert {(row["decision"], row["status"]) for row in rows} == {("deny", 403)}

    exact = add_rule(run_sbx, "allow", "private.test")
    r = poll_until(lambda: (lambda c: c if c.status == 200 else None)(
        proxy.curl("http://private.test/echo")), timeout=LIVE_CHANGE_LIMIT_S,
        message="exact-host rule applied")
    assert upstreams.http.requests[-1].header("Host") == "private.test"
    allowed = db.wait_rows("SELECT * FROM decisions WHERE host = ? AND decision = 'allow'",
                           ("private.test",))
    assert allowed[-1]["rule"] == str(exact)
    assert r.status == 200


def test_unreachable_upstream_is_a_502(run_sbx, deny_all, start_proxy, db):
    add_rule(run_sbx, "allow", "unreachable.test")
    proxy = start_proxy()
    r = proxy.curl("http://unreachable.test/echo")
    assert r.status == 502
    assert r.headers.get("X-Proxy-Error") == "upstream-unreachable"
    row = row_for(db, "host = ?", ("unreachable.test",))
    assert (row["decision"], row["status"]) == ("allow", 502)


# --- live rule changes ---

def test_rule_changes_reach_the_running_proxy_within_a_second(run_sbx, deny_all, proxy):
    assert proxy.curl("http://other.test/echo").status == 403

    rule = add_rule(run_sbx, "allow", "other.test")
    changed = time.monotonic()
    poll_until(lambda: proxy.curl("http://other.test/echo").status == 200,
               timeout=LIVE_CHANGE_LIMIT_S, message="new allow rule applied")
    assert time.monotonic() - changed <= LIVE_CHANGE_LIMIT_S + 0.2

    ok(run_sbx("policy", "rm", "--id", rule))
    poll_until(lambda: proxy.curl("http://other.test/echo").status == 403,
               timeout=LIVE_CHANGE_LIMIT_S, message="removed rule no longer applies")


def test_rules_survive_a_restart(run_sbx, allowed_rule, start_proxy):
    first = start_proxy()
    assert first.curl("http://allowed.test/echo").status == 200
    first.stop()
    second = start_proxy()
    assert second.curl("http://allowed.test/echo").status == 200
    assert second.curl("http://other.test/echo").status == 403


# --- streaming ---

def _read_chunked_through(connection, url):
    started = time.monotonic()
    connection.request("GET", url)
    response = connection.getresponse()
    assert response.status == 200
    arrivals, data = [], b""
    while True:
        piece = response.read1(65536)
        if not piece:
            break
        arrivals.append(time.monotonic() - started)
        data += piece
    return arrivals, data


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_chunked_responses_stream_chunk_by_chunk(allowed_rule, proxy, pki, scheme):
    if scheme == "http":
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        url = "http://allowed.test/chunked"
    else:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        connection = http.client.HTTPSConnection("127.0.0.1", proxy.port, timeout=10,
                                                 context=context)
        connection.set_tunnel("allowed.test", 443)
        url = "/chunked"
    try:
        arrivals, data = _read_chunked_through(connection, url)
    finally:
        connection.close()
    lines = data.decode().splitlines()
    assert [line.split(" t=")[0] for line in lines] == [f"chunk {i}" for i in range(CHUNK_COUNT)]
    # The upstream spreads the chunks over ~0.8 s: a proxy that buffers the body delivers
    # everything at the end.
    assert arrivals[0] < 0.45, arrivals
    assert arrivals[-1] - arrivals[0] >= 0.5, arrivals
    assert len(arrivals) >= 3, arrivals


# --- the decision log through the CLI ---

def test_policy_log_shows_the_proxy_decisions(run_sbx, allowed_rule, proxy, db):
    for _ in range(2):
        assert proxy.curl("http://allowed.test/echo").status == 200
    assert proxy.curl("http://other.test/denied").status == 403
    db.wait_rows("SELECT id FROM decisions", count=3)

    summary = parse_table(ok(run_sbx("policy", "log")).out, SUMMARY_COLUMNS)
    assert [(s["HOST"], s["DECISION"], s["COUNT"]) for s in summary] == [
        ("other.test", "deny", "1"), ("allowed.test", "allow", "2")]
    assert summary[1]["RULE"] == str(allowed_rule) and summary[1]["ROUTE"] == "forward"
    assert summary[0]["SANDBOX"] == "-"

    events = ok(run_sbx("policy", "log", "--events")).out.splitlines()
    assert len(events) == 4
    assert "/denied" in events[3] and "403" in events[3]

    lines = [json.loads(line) for line in
             ok(run_sbx("policy", "log", "--events", "--json")).out.splitlines()]
    assert [(e["host"], e["path"], e["status"]) for e in lines] == [
        ("allowed.test", "/echo", 200), ("allowed.test", "/echo", 200),
        ("other.test", "/denied", 403)]
    blocked = [json.loads(line) for line in
               ok(run_sbx("policy", "log", "--blocked", "--json")).out.splitlines()]
    assert [(b["host"], b["count"]) for b in blocked] == [("other.test", 1)]
    by_host = [json.loads(line) for line in ok(run_sbx(
        "policy", "log", "--events", "--json", "--host", "allowed.*")).out.splitlines()]
    assert {e["host"] for e in by_host} == {"allowed.test"} and len(by_host) == 2


# --- status, control socket, shutdown ---

def test_status_and_control_socket_while_running(run_sbx, allowed_rule, proxy, sbx_home):
    assert proxy.curl("http://allowed.test/echo").status == 200
    socket_path = sbx_home / "sbx.sock"
    assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600

    out = ok(run_sbx("status")).out
    assert "sbx proxy is running" in out
    assert f"127.0.0.1:{proxy.port}" in out
    status = json.loads(ok(run_sbx("status", "--json")).out)
    assert status["listen"] == f"127.0.0.1:{proxy.port}"
    assert status["pid"] == proxy.pid
    assert status["requests_total"] >= 1
    assert status["uptime_s"] >= 0

    result = failure(run_sbx("reset", "-f"))
    assert "running" in result.err
    assert (sbx_home / "policy.db").exists()


def test_sigterm_keeps_every_decision(allowed_rule, proxy, db):
    count = 40
    for i in range(count):
        host = "allowed.test" if i % 2 == 0 else "other.test"
        response = proxy.raw(get_request(host, f"/echo?i={i}"))
        assert response.status == (200 if i % 2 == 0 else 403)
    proxy.stop()  # at once: the rows still queued must be flushed before exit 0
    rows = db.rows("SELECT decision, COUNT(*) AS n FROM decisions GROUP BY decision")
    assert {r["decision"]: r["n"] for r in rows} == {"allow": count // 2, "deny": count // 2}
    assert not (db.file.parent / "sbx.sock").exists(), "the control socket is removed on exit"


def test_proxy_writes_nothing_to_stdout(allowed_rule, proxy):
    assert proxy.curl("http://allowed.test/echo").status == 200
    proxy.stop()
    assert proxy.stdout_text() == ""


# --- start-up failures ---

def test_start_up_errors_exit_1_with_one_line(run_sbx, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"listen": "127.0.0.1:0", "limts": {}}')
    result = run_sbx("proxy", "--config", bad, timeout=20)
    assert result.rc == 1, result
    assert result.err.startswith("sbx: ") and "limts" in result.err, result.err

    result = run_sbx("proxy", "--config", tmp_path / "missing.json", timeout=20)
    assert result.rc == 1 and result.err.startswith("sbx: "), result.err


def test_listen_address_in_use_is_a_start_up_error(run_sbx, proxy):
    result = run_sbx("proxy", "--listen", f"127.0.0.1:{proxy.port}", timeout=20)
    assert result.rc == 1, result
    assert "sbx: " in result.err and str(proxy.port) in result.err, result.err
