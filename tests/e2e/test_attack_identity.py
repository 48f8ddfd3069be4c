"""Attacks on identity and on connection slots (issue 8, items 2 and 3), each performed for real:

- another local user spends the global key through the loopback listener without a token;
- a sandbox leaves out its token to escape its own deny rules and get the global secret, or sends
  another sandbox's token from its own address;
- one client address opens idle connections until no slot is left for anyone else.

Client source addresses 127.0.0.2 and 127.0.0.3 are loopback, so they also pass `same-user`: the
source binding of a sandbox must win over that."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from e2e_support.cli import add_rule, add_sandbox, ok
from e2e_support.clients import poll_until, read_response
from e2e_support.intercept_clients import (PLACEHOLDER, basic_auth, control, send_connect,
                                           tls_context)
from e2e_support.intercept_fixtures import *  # noqa: F401,F403 - pytest fixtures

NOBODY = 65534
SANDBOX_SOURCE = "127.0.0.2"
OTHER_SOURCE = "127.0.0.3"
REQUEST = b"GET http://allowed.test/echo HTTP/1.1\r\nHost: allowed.test\r\n\r\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to act as another user")


def request_from(port, source, data=REQUEST, auth=None, timeout=5.0):
    """One request on a fresh connection whose client end is bound to `source`."""
    if auth:
        data = data.replace(b"\r\n\r\n", f"\r\nProxy-Authorization: {basic_auth(*auth)}"
                                         "\r\n\r\n".encode(), 1)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0)) as sock:
        sock.sendall(data)
        return read_response(sock, timeout=timeout)


# The same request, made by a process running as `nobody`: prints the status code.
AS_OTHER_USER = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"GET http://allowed.test/echo HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n")
data = b""
while b"\\r\\n" not in data:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b" ")[1].decode() if data else "closed")
"""


def status_as_nobody(port):
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
         "-c", AS_OTHER_USER, str(port)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


@pytest.fixture
def allow_allowed(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    return add_rule(run_sbx, "allow", "allowed.test")


# --- (1) the global key over loopback: same-user, none, any ---

@needs_root
def test_another_local_user_without_a_token_gets_407(allow_allowed, start_proxy, upstreams, db):
    proxy = start_proxy()  # anonymous: same-user (the default)
    assert status_as_nobody(proxy.port) == 407
    assert upstreams.received() == []
    [row] = db.wait_rows("SELECT * FROM decisions WHERE status = 407")
    assert row["decision"] == "deny"
    assert f"client socket owned by uid {NOBODY}" in row["reason"], row["reason"]
    # The proxy's own user, meanwhile, is served without a token.
    assert request_from(proxy.port, "127.0.0.1").status == 200
    assert len(upstreams.http.requests) == 1


@needs_root
def test_anonymous_none_refuses_everyone_without_a_token(allow_allowed, run_sbx, start_proxy,
                                                         upstreams):
    token = add_sandbox(run_sbx, "dev")
    proxy = start_proxy({"anonymous": "none"})
    assert request_from(proxy.port, "127.0.0.1").status == 407
    assert status_as_nobody(proxy.port) == 407
    assert upstreams.received() == []
    # A token still works.
    assert request_from(proxy.port, "127.0.0.1", auth=("dev", token)).status == 200


@needs_root
def test_anonymous_any_serves_every_local_user(allow_allowed, start_proxy, upstreams):
    proxy = start_proxy({"anonymous": "any"})
    assert status_as_nobody(proxy.port) == 200
    assert request_from(proxy.port, "127.0.0.1").status == 200


# --- (2) a sandbox bound to its source address cannot shed its identity ---

@pytest.fixture
def bound_sandbox(run_sbx, intercept_rules):
    """Sandbox `vm` bound to 127.0.0.2, with a deny rule of its own on allowed.test (globally
    allowed), and sandbox `dev` with a token."""
    result = ok(run_sbx("sandbox", "add", "vm", "--source", SANDBOX_SOURCE))
    vm_token = result.out.split("Token: ", 1)[1].split()[0]
    deny = add_rule(run_sbx, "deny", "allowed.test", "--sandbox", "vm")
    return {"vm": vm_token, "dev": add_sandbox(run_sbx, "dev"), "deny_rule": deny}


def test_sandbox_without_its_token_is_still_that_sandbox(bound_sandbox, start_intercepting,
                                                         plain_upstream, db, run_sbx):
    proxy = start_intercepting()
    r = request_from(proxy.port, SANDBOX_SOURCE)  # no Proxy-Authorization at all
    assert (r.status, r.get("X-Proxy-Error")) == (403, "blocked-by-policy")
    [row] = db.wait_rows("SELECT * FROM decisions WHERE host = 'allowed.test'")
    assert (row["sandbox"], row["rule"]) == ("vm", str(bound_sandbox["deny_rule"]))
    # With its own token: the same sandbox, the same deny.
    r = request_from(proxy.port, SANDBOX_SOURCE, auth=("vm", bound_sandbox["vm"]))
    assert r.status == 403
    # Anyone else on loopback is anonymous and gets the global allow.
    assert request_from(proxy.port, OTHER_SOURCE).status == 200
    assert len(plain_upstream.requests) == 1
    out = ok(run_sbx("sandbox", "ls")).out
    assert SANDBOX_SOURCE in out and "SOURCES" in out


def test_another_sandboxs_token_from_a_bound_address_gets_407(bound_sandbox, start_intercepting,
                                                              plain_upstream, db):
    proxy = start_intercepting()
    r = request_from(proxy.port, SANDBOX_SOURCE, auth=("dev", bound_sandbox["dev"]))
    assert (r.status, r.get("X-Proxy-Error")) == (407, "proxy-auth-required")
    assert plain_upstream.requests == []
    [row] = db.wait_rows("SELECT * FROM decisions WHERE status = 407")
    assert row["sandbox"] == "vm"
    assert "sandbox 'dev'" in row["reason"] and "sandbox 'vm'" in row["reason"], row["reason"]
    assert bound_sandbox["dev"] not in row["reason"]
    # The same token from an unbound address is dev.
    assert request_from(proxy.port, OTHER_SOURCE, auth=("dev", bound_sandbox["dev"])).status == 200


def test_sandbox_without_its_token_gets_its_own_secret_not_the_global_one(
        bound_sandbox, start_intercepting, secrets, new_key, service_upstream, sbx_ca, db):
    global_key, vm_key = new_key("openai"), new_key("openai")
    secrets.set("openai", global_key)
    secrets.set("openai", vm_key, sandbox="vm")
    proxy = start_intercepting()

    def models_from(source):
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10,
                                       source_address=(source, 0))
        with raw:
            send_connect(raw, "api.openai.com")  # no Proxy-Authorization
            with tls_context(sbx_ca).wrap_socket(raw, server_hostname="api.openai.com") as tls:
                tls.sendall(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n"
                            b"Authorization: Bearer " + PLACEHOLDER.encode() + b"\r\n"
                            b"Connection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        return service_upstream.requests[-1].values("Authorization")

    assert models_from(SANDBOX_SOURCE) == [f"Bearer {vm_key}"]
    assert models_from(OTHER_SOURCE) == [f"Bearer {global_key}"]
    rows = db.wait_rows("SELECT * FROM decisions WHERE method = 'GET' ORDER BY id", count=2)
    assert [(r["sandbox"] or "", r["credential"]) for r in rows] == [
        ("vm", "openai"), ("", "openai")]


def test_overlapping_sources_are_refused_at_add_time(run_sbx):
    ok(run_sbx("sandbox", "add", "a", "--source", "10.1.0.0/16"))
    result = run_sbx("sandbox", "add", "b", "--source", "10.1.2.3")
    assert result.rc != 0
    assert "overlaps 10.1.0.0/16 of sandbox 'a'" in result.err
    assert "b" not in [line.split()[0] for line in ok(run_sbx("sandbox", "ls")).out.splitlines()]


# --- (3) one address cannot take every connection slot ---

def test_idle_connections_from_one_address_cannot_starve_another(allow_allowed, start_proxy,
                                                                 upstreams, sbx_home):
    per_client, extra, first_byte_s = 4, 3, 1.5
    proxy = start_proxy({"limits": {"max_connections": 10, "max_connections_per_client": per_client,
                                    "first_byte_timeout_ms": int(first_byte_s * 1000)}})
    idle = []
    try:
        for _ in range(per_client + extra):
            idle.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=5,
                                                 source_address=(SANDBOX_SOURCE, 0)))
        opened = time.monotonic()
        # Those beyond the per-client cap are refused at once with 429, readable by the client.
        refused = [read_response(s, timeout=3) for s in idle[per_client:]]
        assert [(r.status, r.get("X-Proxy-Error")) for r in refused] == \
            [(429, "connection-limit")] * extra
        # Another address is served meanwhile, while the idle connections still hold their slots.
        assert request_from(proxy.port, OTHER_SOURCE).status == 200
        assert time.monotonic() - opened < first_byte_s * 0.8, "too slow to prove anything"
        # The idle ones sent nothing: closed after first_byte_timeout, not the 60 s idle timeout.
        for s in idle[:per_client]:
            s.settimeout(5)
            assert s.recv(1) == b""
        closed_after = time.monotonic() - opened
        assert first_byte_s * 0.9 < closed_after < first_byte_s + 2.5, closed_after
    finally:
        for s in idle:
            s.close()
    # The address has its slots back.
    assert poll_until(lambda: request_from(proxy.port, SANDBOX_SOURCE).status == 200, timeout=3)
    code, body = control(sbx_home, "GET", "/metrics")
    text = body.decode()
    assert code == 200
    assert f'sbx_errors_total{{kind="client_connection_limit"}} {extra}' in text, text


def test_a_trickled_first_head_is_cut_off_after_first_byte_timeout(allow_allowed, start_proxy,
                                                                   upstreams, db):
    proxy = start_proxy({"limits": {"first_byte_timeout_ms": 500}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET http://allowed.test/echo HTTP/1.1\r\n")  # and then nothing
        t0 = time.monotonic()
        s.settimeout(5)
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        # Part of a head came: it is answered (408), not just dropped.
        assert data.startswith(b"HTTP/1.1 408"), data
        assert time.monotonic() - t0 < 3, "the header_timeout (10 s) was not what closed it"
    [row] = db.wait_rows("SELECT * FROM decisions WHERE status = 408")
    assert row["decision"] == "deny"
    # A kept-alive connection may wait longer than first_byte_timeout between requests.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(REQUEST)
        assert read_response(s).status == 200
        time.sleep(0.8)
        s.sendall(REQUEST)
        assert read_response(s).status == 200
    assert upstreams.received() != []
