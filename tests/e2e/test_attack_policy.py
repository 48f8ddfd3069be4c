"""Attacks on path rules and on name resolution (issue 8, items 6 and 7).

- Path variants: a deny on `/admin/**` or `/exact` must not be sidestepped by `;` parameters,
  trailing dots, a trailing `/` or `/.`, case, encoded dots or repeated slashes, on the forward
  route (plain `GET http://...`) and on the intercepted route (HTTPS through CONNECT, which path
  rules force). Each variant gets 403, nothing reaches the upstream, and the row carries the
  normalised path; the plain paths are still served.
- DNS side channel: a name that no name rule allows is never sent to a resolver, even when a CIDR
  allow rule exists (a sandbox could otherwise exfiltrate data in DNS queries). The proxy runs in
  its own mount namespace whose /etc/resolv.conf points at a recording DNS server on 127.0.0.77.
"""

import json
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from e2e_support.cli import DEFAULT_DENY_REASON, add_rule, ok
from e2e_support.clients import poll_until

HOST = "allowed.test"

# (path as the client sends it, the normalised path the proxy logs and decides on, deny rule)
DENIED_VARIANTS = [
    ("/admin/x", "/admin/x", "admin"),
    ("/admin;jsessionid=1/x", "/admin;jsessionid=1/x", "admin"),
    ("/admin;/x", "/admin;/x", "admin"),
    ("/admin./x", "/admin./x", "admin"),
    ("/admin%2e/x", "/admin./x", "admin"),
    ("/admin%2E%2E/x", "/admin../x", "admin"),
    ("/admin%20/x", "/admin%20/x", "admin"),
    ("/admin%3b/x", "/admin%3B/x", "admin"),
    ("/admin;x./y", "/admin;x./y", "admin"),
    ("/ADMIN/x", "/ADMIN/x", "admin"),
    ("/Admin;a=b/x", "/Admin;a=b/x", "admin"),
    ("//admin/x", "/admin/x", "admin"),
    ("/.%2e/admin/x", "/admin/x", "admin"),
    ("/%2e/admin", "/admin", "admin"),
    ("/public/../admin/x", "/admin/x", "admin"),
    ("/public;x/%2e%2e/admin", "/admin", "admin"),
    ("/;/admin/x", "/;/admin/x", "admin"),
    ("/admin?q=/public", "/admin", "admin"),
    ("/exact", "/exact", "exact"),
    ("/exact/", "/exact/", "exact"),
    ("/exact;x", "/exact;x", "exact"),
    ("/exact/.", "/exact/", "exact"),
    ("/exact/;x", "/exact/;x", "exact"),
    ("/exact.", "/exact.", "exact"),
    ("/exact%2e", "/exact.", "exact"),
    ("/EXACT", "/EXACT", "exact"),
    ("/x/../exact//", "/exact/", "exact"),
]

# Paths a server may read as a dot-segment (Tomcat: "..;", Windows: "...", ".. "): refused (400).
REFUSED_PATHS = ["/admin/..;/x", "/public/..;/admin/x", "/public/.;/admin", "/public/.../admin",
                 "/public/..%20/admin", "/public/.%3B/admin", "/public/..%00/admin"]

# Normal traffic next to the rules: (path sent, path logged). The test upstream answers 404 for
# paths other than /echo...; what counts is that the request reached it.
ALLOWED_PATHS = [("/echo", "/echo"), ("/public/x", "/public/x"),
                 ("/administrator", "/administrator"), ("/exact/sub", "/exact/sub"),
                 ("/exactly", "/exactly"), ("/public/admin", "/public/admin")]


@pytest.fixture
def path_rules(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    return {"allow": add_rule(run_sbx, "allow", HOST),
            "admin": add_rule(run_sbx, "deny", HOST, "--path", "/admin/**"),
            "exact": add_rule(run_sbx, "deny", HOST, "--path", "/exact")}


def forward_get(proxy, path):
    return proxy.raw(f"GET http://{HOST}{path} HTTP/1.1\r\nHost: {HOST}\r\n"
                     f"Connection: close\r\n\r\n".encode())


def only_row(db, route, path):
    [row] = db.wait_rows("SELECT * FROM decisions WHERE host = ? AND route = ? AND path = ?",
                         (HOST, route, path))
    return row


# --- (a) path variants, forward route ---

@pytest.mark.parametrize("sent, logged, rule", DENIED_VARIANTS, ids=[v[0] for v in DENIED_VARIANTS])
def test_forward_path_variant_is_denied(path_rules, proxy, upstreams, db, sent, logged, rule):
    r = forward_get(proxy, sent)
    assert r.status == 403, (r.status, r.body)
    assert r.get("X-Proxy-Error") == "blocked-by-policy"
    assert upstreams.received() == [], "nothing may reach the upstream"
    row = only_row(db, "forward", logged)
    assert (row["method"], row["decision"], row["rule"], row["status"]) == (
        "GET", "deny", str(path_rules[rule]), 403)
    assert f"rule {path_rules[rule]}" in row["reason"]

    # The same client still gets a plain path served.
    r = forward_get(proxy, "/echo/public")
    assert r.status == 200, (r.status, r.body)
    assert [g.path for g in upstreams.http.requests] == ["/echo/public"]


@pytest.mark.parametrize("sent", REFUSED_PATHS)
def test_forward_path_read_as_a_dot_segment_is_refused(path_rules, proxy, upstreams, db, sent):
    r = forward_get(proxy, sent)
    assert r.status == 400, (r.status, r.body)
    assert r.get("X-Proxy-Error") == "bad-request"
    assert upstreams.received() == []
    r = forward_get(proxy, "/echo")
    assert r.status == 200
    assert [g.path for g in upstreams.http.requests] == ["/echo"]


def test_forward_plain_paths_are_still_served(path_rules, proxy, upstreams, db):
    for sent, logged in ALLOWED_PATHS:
        r = forward_get(proxy, sent)
        expected = 200 if sent.startswith("/echo") else 404
        assert (r.status, r.get("X-Proxy-Error")) == (expected, None), (sent, r.status, r.body)
        row = only_row(db, "forward", logged)
        assert (row["decision"], row["rule"], row["status"]) == (
            "allow", str(path_rules["allow"]), expected)
    assert [g.path for g in upstreams.http.requests] == [sent for sent, _ in ALLOWED_PATHS]


# --- (a) path variants, intercepted route (HTTPS through CONNECT; path rules force interception) ---

def intercepted_get(proxy, sbx_ca, path):
    # --path-as-is: curl would otherwise resolve dot-segments itself and hide the attack.
    return proxy.curl(f"https://{HOST}{path}", "--path-as-is", "--cacert", sbx_ca)


@pytest.mark.parametrize("sent, logged, rule", DENIED_VARIANTS, ids=[v[0] for v in DENIED_VARIANTS])
def test_intercepted_path_variant_is_denied(path_rules, proxy, upstreams, db, sbx_home, sent,
                                            logged, rule):
    sbx_ca = sbx_home / "ca.pem"
    r = intercepted_get(proxy, sbx_ca, sent)
    assert (r.connect_status, r.status) == (200, 403), r
    assert r.headers.get("X-Proxy-Error") == "blocked-by-policy"
    assert upstreams.https.requests == [], "nothing may reach the upstream"
    row = only_row(db, "intercept", logged)
    assert (row["method"], row["decision"], row["rule"], row["status"]) == (
        "GET", "deny", str(path_rules[rule]), 403)

    r = intercepted_get(proxy, sbx_ca, "/echo/public")
    assert (r.rc, r.status) == (0, 200), r
    assert [g.path for g in upstreams.https.requests] == ["/echo/public"]


@pytest.mark.parametrize("sent", REFUSED_PATHS)
def test_intercepted_path_read_as_a_dot_segment_is_refused(path_rules, proxy, upstreams, sbx_home,
                                                           sent):
    r = intercepted_get(proxy, sbx_home / "ca.pem", sent)
    assert (r.connect_status, r.status) == (200, 400), r
    assert upstreams.https.requests == []


# --- (b) no DNS query for a denied name ---

class RecordingDns:
    """A UDP DNS server that records every queried name and answers NXDOMAIN."""

    def __init__(self, address):
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.sock.settimeout(0.2)
        self.names = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True, name="recording-dns")
        self._thread.start()

    @staticmethod
    def _question(packet):
        labels, at = [], 12
        while at < len(packet) and packet[at] != 0:
            length = packet[at]
            labels.append(packet[at + 1:at + 1 + length].decode("ascii", "replace"))
            at += 1 + length
        return ".".join(labels).lower(), at + 5  # the zero byte, QTYPE and QCLASS

    def _serve(self):
        while not self._stop:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(packet) < 12:
                continue
            name, end = self._question(packet)
            with self._lock:
                self.names.append(name)
            flags = 0x8000 | (packet[2] & 0x01) << 8 | 0x0080 | 3  # QR, RD copied, RA, NXDOMAIN
            reply = packet[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 0) + packet[12:end]
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                pass

    def queried(self):
        with self._lock:
            return list(self.names)

    def close(self):
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=2)


DNS_ADDRESS = "127.0.0.77"


@pytest.fixture
def recording_dns(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed: cannot give the proxy its own resolv.conf")
    probe = subprocess.run(["unshare", "--mount", "sh", "-c",
                            "mount --bind /dev/null /etc/hostname"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare --mount with a bind mount is not permitted here "
                    f"({probe.stderr.decode(errors='replace').strip()})")
    try:
        dns = RecordingDns(DNS_ADDRESS)
    except OSError as e:
        pytest.skip(f"cannot bind a DNS server to {DNS_ADDRESS}:53 ({e})")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDRESS}\noptions timeout:1 attempts:1\n")
    # The proxy sees our resolv.conf in its own mount namespace; the host's is untouched.
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv]
    yield dns, wrapper
    dns.close()


def connect(proxy, host, port=443):
    return proxy.raw(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())


def test_a_denied_name_is_never_resolved_while_a_cidr_allow_exists(run_sbx, start_proxy,
                                                                   recording_dns, db):
    dns, wrapper = recording_dns
    ok(run_sbx("policy", "init", "deny-all"))
    add_rule(run_sbx, "allow", "10.0.0.0/8")
    tag = secrets.token_hex(6)
    control = f"probe-{tag}.allowed.example"
    add_rule(run_sbx, "allow", control)
    proxy = start_proxy(wrapper=wrapper)

    exfil = [f"exfil-{tag}.denied.example", f"exfil2-{tag}.denied.example"]
    r = connect(proxy, exfil[0])
    assert r.status == 403, (r.status, r.body)
    assert r.get("X-Proxy-Error") == "blocked-by-policy"
    r = proxy.raw(f"GET http://{exfil[1]}/x HTTP/1.1\r\nHost: {exfil[1]}\r\n"
                  f"Connection: close\r\n\r\n".encode())
    assert r.status == 403, (r.status, r.body)
    for name in exfil:
        [row] = db.wait_rows("SELECT * FROM decisions WHERE host = ?", (name,))
        assert (row["decision"], row["rule"], row["reason"]) == ("deny", "default",
                                                                  DEFAULT_DENY_REASON)

    # Positive control: a name a name rule allows is resolved through the same resolver (which
    # answers NXDOMAIN, so the proxy reports a DNS failure).
    r = connect(proxy, control)
    assert r.status == 502, (r.status, r.body)
    poll_until(lambda: control in dns.queried(), timeout=5,
               message=f"a DNS query for {control}")
    # Queries for the denied names would have come before the control's.
    time.sleep(0.3)
    leaked = [n for n in dns.queried() if tag in n and n != control]
    assert leaked == [], f"denied names reached the resolver: {leaked}"


def test_policy_check_agrees_with_the_proxy_and_resolves_nothing(run_sbx, tmp_path):
    ok(run_sbx("policy", "init", "deny-all"))
    cidr = add_rule(run_sbx, "allow", "10.0.0.0/8")
    name = add_rule(run_sbx, "allow", "**.corp.example")
    config = tmp_path / "resolve.json"
    config.write_text(json.dumps({"resolve": {"db.denied.example:443": "10.1.2.3:443",
                                              "db.corp.example:443": "10.1.2.3:443"}}))

    def check(target):
        out = ok(run_sbx("policy", "check", "network", target, "--config", config, "--json")).out
        return json.loads(out)

    # A name only the CIDR allow would match is denied, even when its address is in the CIDR.
    data = check("db.denied.example")
    assert (data["decision"], data["rule"], data["reason"]) == ("deny", "default",
                                                                DEFAULT_DENY_REASON)
    # A name a name rule allows is checked on its address: the CIDR unlocks the private range.
    data = check("db.corp.example")
    assert (data["decision"], data["rule"]) == ("allow", str(cidr))
    assert check("other.corp.example")["rule"] == str(name)
    # An IP literal is decided on its address.
    assert (check("10.9.9.9")["decision"], check("10.9.9.9")["rule"]) == ("allow", str(cidr))
    assert check("https://[::ffff:10.1.1.1]:8443/x")["decision"] == "allow"
    # Targets are parsed as the proxy parses them.
    assert check("HTTP://DB.Corp.Example.:8080/path")["host"] == "db.corp.example"
    assert check("HTTP://DB.Corp.Example.:8080/path")["port"] == 8080


def test_an_ip_literal_in_a_blocked_range_is_refused_as_a_blocked_address(run_sbx, start_proxy,
                                                                          upstreams, db):
    ok(run_sbx("policy", "init", "deny-all"))
    add_rule(run_sbx, "allow", "**")  # allows the literal by name; no CIDR rule in play
    add_rule(run_sbx, "allow", HOST)  # the exact host unlocks its loopback address
    proxy = start_proxy()
    for request in (b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
                    b"GET http://127.0.0.1:%d/echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                    b"Connection: close\r\n\r\n"):
        r = proxy.raw(request % (upstreams.http.port, upstreams.http.port))
        assert (r.status, r.get("X-Proxy-Error")) == (403, "blocked-address"), (r.status, r.body)
    assert upstreams.received() == []
    rows = db.wait_rows("SELECT * FROM decisions WHERE host = '127.0.0.1'", count=2)
    assert {(row["decision"], row["status"]) for row in rows} == {("deny", 403)}
    assert all("blocked address range (loopback)" in row["reason"] for row in rows)
    # Normal traffic is still served.
    r = forward_get(proxy, "/echo")
    assert r.status == 200, (r.status, r.body)
    assert [g.path for g in upstreams.http.requests] == ["/echo"]
