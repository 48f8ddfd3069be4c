"""Operational behaviour of the proxy and the CLI that the other files do not cover: SIGHUP
reload, connection caps, tunnel half-close and idle timeout, /metrics, `sbx sandbox env`,
`sbx secret import` and `sbx ca rotate` against a running proxy."""

import json
import socket
import subprocess
import threading
import time

import pytest

from e2e_support.cli import add_rule, add_sandbox, ok
from e2e_support.clients import poll_until, read_response


def control(sbx_home, method, path):
    out = subprocess.run(["curl", "-sS", "--unix-socket", str(sbx_home / "sbx.sock"), "-X", method,
                          f"http://sbx{path}"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return out.stdout


class EchoServer:
    """Plain TCP on 127.0.0.1: reads until the client half-closes, then sends back what it got
    and closes. A tunnel that forwards the half-close lets the reply through."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                try:
                    while chunk := conn.recv(65536):
                        data += chunk
                    conn.sendall(b"echo:" + data)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def open_tunnel(proxy_port, target):
    """CONNECT, then read exactly the response head: what follows belongs to the tunnel."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"closed during the CONNECT response: {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def test_tunnel_passes_half_close_and_the_reply_after_it(run_sbx, start_proxy, echo):
    add_rule(run_sbx, "allow", "echo.test")
    proxy = start_proxy({"resolve": {"echo.test:7000": f"127.0.0.1:{echo.port}"}})
    with open_tunnel(proxy.port, "echo.test:7000") as sock:
        sock.sendall(b"hello through the tunnel")
        sock.shutdown(socket.SHUT_WR)  # the echo server answers only after seeing EOF
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply == b"echo:hello through the tunnel"


def test_tunnel_relays_small_and_bulk_writes_byte_for_byte(run_sbx, start_proxy, echo):
    # Small writes, a bulk one and small ones again: the relay moves between its small buffer and
    # a borrowed large one in both directions and must lose, reorder or repeat nothing.
    add_rule(run_sbx, "allow", "echo.test")
    proxy = start_proxy({"resolve": {"echo.test:7000": f"127.0.0.1:{echo.port}"}})
    pieces = [b"a" * 100, bytes(range(256)) * (3 * 4096), b"b" * 2048, b"c" * 10]
    with open_tunnel(proxy.port, "echo.test:7000") as sock:
        sock.settimeout(10)
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)  # separate reads on the proxy's side
        sock.shutdown(socket.SHUT_WR)
        reply = bytearray()
        while chunk := sock.recv(65536):
            reply += chunk
    assert bytes(reply) == b"echo:" + b"".join(pieces)


def test_idle_tunnel_is_closed_after_the_idle_timeout(run_sbx, start_proxy, echo, db):
    add_rule(run_sbx, "allow", "echo.test")
    proxy = start_proxy({"resolve": {"echo.test:7000": f"127.0.0.1:{echo.port}"},
                         "limits": {"tunnel_idle_timeout_ms": 300}})
    with open_tunnel(proxy.port, "echo.test:7000") as sock:
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the proxy, not by the echo server
        waited = time.monotonic() - started
    assert 0.2 < waited < 3.0, waited
    [row] = db.wait_rows("SELECT * FROM decisions WHERE host = 'echo.test'")
    assert "idle timeout" in row["reason"]


def test_per_sandbox_connection_cap(run_sbx, start_proxy, upstreams):
    add_rule(run_sbx, "allow", "allowed.test")
    proxy = start_proxy({"limits": {"max_connections_per_sandbox": 1}})
    request = b"GET http://allowed.test/echo HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as first:
        first.sendall(request)
        assert read_response(first, timeout=5).status == 200  # kept alive: holds the slot
        second = proxy.raw(request)
        assert second.status == 429
        assert second.get("X-Proxy-Error") == "connection-limit"
    # The slot is free again once the first connection is gone.
    assert poll_until(lambda: proxy.raw(request).status == 200, timeout=3)


def test_global_connection_cap(run_sbx, start_proxy, upstreams):
    add_rule(run_sbx, "allow", "allowed.test")
    proxy = start_proxy({"limits": {"max_connections": 1}})
    request = b"GET http://allowed.test/echo HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as first:
        first.sendall(request)
        assert read_response(first, timeout=5).status == 200
        second = proxy.raw(request)
        assert second.status == 503
        assert second.get("X-Proxy-Error") == "connection-limit"


def test_sighup_reloads_the_config(run_sbx, start_proxy, upstreams, tmp_path):
    add_rule(run_sbx, "allow", "hup.test")
    proxy = start_proxy({"resolve": {"hup.test:80": f"127.0.0.1:{upstreams.closed_port}"}})
    assert proxy.curl("http://hup.test/echo").status == 502
    config_file = tmp_path / "config-0.json"
    config = json.loads(config_file.read_text())
    config["resolve"]["hup.test:80"] = f"127.0.0.1:{upstreams.http.port}"
    config_file.write_text(json.dumps(config))
    proxy.signal(__import__("signal").SIGHUP)
    assert poll_until(lambda: proxy.curl("http://hup.test/echo").status == 200, timeout=3)
    assert proxy.running()


def test_metrics_count_what_happened(run_sbx, start_proxy, upstreams, sbx_home):
    add_rule(run_sbx, "allow", "allowed.test")
    proxy = start_proxy()
    assert proxy.curl("http://allowed.test/echo").status == 200
    assert proxy.curl("http://denied.test/echo").status == 403
    text = control(sbx_home, "GET", "/metrics")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['sbx_decisions_total{decision="allow"}'] == 1
    assert samples['sbx_decisions_total{decision="deny"}'] == 1
    assert samples['sbx_routes_total{route="forward"}'] == 1
    assert samples["sbx_requests_total"] == 2
    assert "# TYPE sbx_active_connections gauge" in text


def test_sandbox_env_gives_what_a_sandbox_needs(run_sbx, sbx_home):
    token = add_sandbox(run_sbx, "dev")
    ok(run_sbx("secret", "set", "-g", "openai", input="sk-env-test-0123456789"))
    env = dict(line.split("=", 1) for line in ok(run_sbx("sandbox", "env", "dev")).out.splitlines())
    assert env["HTTPS_PROXY"] == f"http://dev:{token}@127.0.0.1:3128"
    assert env["HTTP_PROXY"] == env["HTTPS_PROXY"] == env["https_proxy"]
    assert "127.0.0.1" in env["NO_PROXY"]
    assert env["OPENAI_API_KEY"] == "proxy-managed"
    assert "ANTHROPIC_API_KEY" not in env  # no secret stored for it
    assert "sk-env-test" not in "".join(env.values())
    ca = (sbx_home / "ca.pem").read_text()
    assert env["NODE_EXTRA_CA_CERTS"] == str(sbx_home / "ca.pem")
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
                "npm_config_cafile"):
        bundle = open(env[var]).read()
        assert ca in bundle, var
        assert bundle.count("BEGIN CERTIFICATE") > 1, "system CAs plus the sbx CA"
    # --ca-dir is where a container sees the files.
    env = dict(line.split("=", 1)
               for line in ok(run_sbx("sandbox", "env", "dev", "--ca-dir", "/etc/sbx")).out.splitlines())
    assert env["SSL_CERT_FILE"] == "/etc/sbx/ca-bundle.pem"
    # A new token replaces the old one.
    env = dict(line.split("=", 1)
               for line in ok(run_sbx("sandbox", "env", "dev", "--new-token")).out.splitlines())
    assert token not in env["HTTPS_PROXY"]


def test_secret_import_reads_the_services_environment(run_sbx, sbx_env):
    env = dict(sbx_env, OPENAI_API_KEY="sk-imported-0123456789", GROQ_API_KEY="")
    result = ok(run_sbx("secret", "import", "openai", "groq", env=env))
    assert "Imported openai" in result.out
    listing = ok(run_sbx("secret", "ls", "--json")).out.splitlines()
    entries = [json.loads(line) for line in listing]
    assert [(e["service"], e["secret"]) for e in entries] == [("openai", "sk-i****...****6789")]


def test_ca_rotate_reaches_the_running_proxy(run_sbx, start_proxy, sbx_home):
    proxy = start_proxy()
    before = json.loads(control(sbx_home, "GET", "/v1/status"))["ca_fingerprint"]
    result = ok(run_sbx("ca", "rotate", "-f"))
    assert "The running proxy now signs with the new CA." in result.out
    after = json.loads(control(sbx_home, "GET", "/v1/status"))["ca_fingerprint"]
    assert after != before
    assert after in result.out
    assert ok(run_sbx("ca", "cert")).out == (sbx_home / "ca.pem").read_text()
