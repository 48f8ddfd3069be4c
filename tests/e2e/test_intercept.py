"""Interception with credential injection, end to end: curl and Python's TLS through the real proxy
to local upstreams that impersonate api.openai.com and api.anthropic.com (test PKI, trusted by the
proxy through upstream_ca_file) and record every request they receive.

What is checked is what the upstream received (the stored key in the client's header form, never a
placeholder), what the client and the logs never see (the key), the decision rows, per-sandbox and
live secret changes, refusal of unverifiable upstreams, streaming (SSE, WebSocket, 50 MiB bodies
with bounded memory) and the leaf cache."""

import json
import os
import socket
import threading
import time

import pytest

from e2e_support.cli import add_rule, add_sandbox, ok
from e2e_support.intercept_clients import (PLACEHOLDER, control, https_connection, open_tunnel,
                                           request_over, send_connect, tls_context, vm_hwm_kib,
                                           websocket_roundtrip)
from e2e_support.intercept_fixtures import *  # noqa: F401,F403 - pytest fixtures

MIB = 1 << 20
BIG_BODY = 50 * MIB
HWM_GROWTH_LIMIT_KIB = 30 * 1024
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


def credential_headers(recorded):
    """{lower-case name: [values]} of the credential headers the upstream received."""
    found = {}
    for name, value in recorded.headers:
        if name.lower() in CREDENTIAL_HEADERS:
            found.setdefault(name.lower(), []).append(value)
    return found


def client_saw(result):
    """Everything a curl client received (every response head and the body), as text."""
    heads = "\n".join(f"{b.status} {b.reason}\n" + "\n".join(f"{k}: {v}" for k, v in b.headers)
                      for b in result.blocks)
    return heads + "\n" + result.body.decode("latin-1") + "\n" + result.stderr


def rows(db, where, params=(), count=1):
    try:
        return db.wait_rows(f"SELECT * FROM decisions WHERE {where} ORDER BY id", params,
                            count=count)
    except AssertionError as e:
        every = db.rows("SELECT id, sandbox, method, host, path, route, status, credential, "
                        "reason FROM decisions ORDER BY id")
        raise AssertionError(f"{e}\nall decision rows:\n" +
                             "\n".join(str(r) for r in every)) from None


def or_empty(value):
    """NULL and "" both mean none (sandbox, credential)."""
    return value or ""


def status_counters(sbx_home):
    code, body = control(sbx_home, "GET", "/v1/status")
    assert code == 200, body
    return json.loads(body)


def bundle(tmp_path, *pem_files):
    """One CA file holding several CAs (curl --cacert takes a single file)."""
    path = tmp_path / f"bundle-{len(pem_files)}-{time.monotonic_ns()}.pem"
    path.write_bytes(b"".join(p.read_bytes() for p in pem_files))
    return path


# --- injection in the client's header form ---

def test_openai_placeholder_is_replaced_by_the_stored_key(start_intercepting, secrets, new_key,
                                                          service_upstream, sbx_ca, db,
                                                          intercept_rules):
    key = new_key("openai")
    secrets.set("openai", key)
    proxy = start_intercepting()
    body = '{"model":"gpt-test","messages":[]}'
    r = proxy.curl("https://api.openai.com/v1/chat/completions?stream=false", "--cacert", sbx_ca,
                   "-H", f"Authorization: Bearer {PLACEHOLDER}", "-H",
                   "Content-Type: application/json", "--data-binary", body)
    # curl trusted only the sbx CA: a 200 proves the proxy terminated TLS with its own leaf.
    assert (r.rc, r.connect_status, r.status) == (0, 200, 200), r

    [got] = service_upstream.requests
    assert (got.method, got.path, got.sni) == (
        "POST", "/v1/chat/completions?stream=false", "api.openai.com")
    assert credential_headers(got) == {"authorization": [f"Bearer {key}"]}
    assert got.values("Host") == ["api.openai.com"]
    assert got.body == body.encode() and got.body_len == len(body)
    assert PLACEHOLDER not in got.text()
    assert key not in client_saw(r)

    [request_row] = rows(db, "host = ? AND method = 'POST'", ("api.openai.com",))
    expected = {"method": "POST", "scheme": "https", "host": "api.openai.com", "port": 443,
                "path": "/v1/chat/completions", "route": "intercept", "decision": "allow",
                "rule": str(intercept_rules["api.openai.com"]), "credential": "openai",
                "status": 200}
    assert {k: request_row[k] for k in expected} == expected
    assert request_row["bytes_up"] >= len(body)
    [connect_row] = rows(db, "host = ? AND method = 'CONNECT'", ("api.openai.com",))
    assert (connect_row["route"], connect_row["decision"], connect_row["port"]) == (
        "intercept", "allow", 443)


ANTHROPIC_CASES = [
    # (what the client sends, what the upstream must receive); KEY stands for the stored key
    ({"x-api-key": PLACEHOLDER}, {"x-api-key": ["KEY"]}),
    ({"Authorization": f"Bearer {PLACEHOLDER}"}, {"authorization": ["Bearer KEY"]}),
    ({}, {"x-api-key": ["KEY"]}),
    ({"x-api-key": PLACEHOLDER, "Authorization": f"Bearer {PLACEHOLDER}"},
     {"x-api-key": ["KEY"], "authorization": ["Bearer KEY"]}),
    # A real key the client happens to hold is replaced too.
    ({"x-api-key": "sk-ant-the-clients-own-key"}, {"x-api-key": ["KEY"]}),
]


def test_anthropic_every_header_form_is_rewritten_and_the_default_added(
        start_intercepting, secrets, new_key, service_upstream, sbx_ca, db):
    key = new_key("anthropic")
    secrets.set("anthropic", key)
    proxy = start_intercepting()
    problems = []
    for case, (sent, expected) in enumerate(ANTHROPIC_CASES):
        args = ["--cacert", sbx_ca, "-H", "anthropic-version: 2023-06-01",
                "-H", "Content-Type: application/json", "--data-binary", "{}"]
        for name, value in sent.items():
            args += ["-H", f"{name}: {value}"]
        r = proxy.curl(f"https://api.anthropic.com/v1/messages?case={case}", *args)
        assert (r.rc, r.status) == (0, 200), (sent, r)
        assert key not in client_saw(r)
        [got] = [g for g in service_upstream.requests if g.path.endswith(f"case={case}")]
        want = {name: [v.replace("KEY", key) for v in values] for name, values in expected.items()}
        if credential_headers(got) != want:
            problems.append(f"sent {sent}: upstream got {credential_headers(got)}, expected "
                            f"{want}")
        if PLACEHOLDER in got.text() or "sk-ant-the-clients-own-key" in got.text():
            problems.append(f"sent {sent}: a client value reached the upstream: {got.headers}")
        if got.values("anthropic-version") != ["2023-06-01"]:
            problems.append(f"sent {sent}: anthropic-version not passed on: {got.headers}")
    assert not problems, "\n".join(problems)
    credentials = [row["credential"] for row in
                   rows(db, "host = ? AND method = 'POST'", ("api.anthropic.com",),
                        count=len(ANTHROPIC_CASES))]
    assert credentials == ["anthropic"] * len(ANTHROPIC_CASES)


# --- where no credential may go ---

def test_other_allowed_host_is_tunnelled_and_gets_no_credential(start_intercepting, secrets,
                                                                new_key, service_upstream, pki,
                                                                db):
    key = new_key("openai")
    secrets.set("openai", key)
    proxy = start_intercepting()
    # Only the test CA: an intercepted connection (sbx leaf) would fail verification here.
    r = proxy.curl("https://allowed.test/v1/models", "--cacert", pki.ca_cert,
                   "-H", f"Authorization: Bearer {PLACEHOLDER}")
    assert (r.rc, r.connect_status, r.status) == (0, 200, 200), r
    [got] = service_upstream.requests
    assert got.sni == "allowed.test"
    assert credential_headers(got) == {"authorization": [f"Bearer {PLACEHOLDER}"]}
    assert key not in got.text()
    [row] = rows(db, "host = ?", ("allowed.test",))
    assert (row["method"], row["route"], or_empty(row["credential"])) == ("CONNECT", "tunnel", "")


def test_intercepted_non_service_host_gets_no_credential(start_intercepting, secrets, new_key,
                                                         service_upstream, sbx_ca, db):
    key = new_key("openai")
    secrets.set("openai", key)
    secrets.set("anthropic", new_key("anthropic"))
    proxy = start_intercepting({"intercept_all": True})
    r = proxy.curl("https://allowed.test/v1/models", "--cacert", sbx_ca,
                   "-H", f"Authorization: Bearer {PLACEHOLDER}", "-H", "x-api-key: client-value")
    assert (r.rc, r.status) == (0, 200), r
    [got] = service_upstream.requests
    assert credential_headers(got) == {"authorization": [f"Bearer {PLACEHOLDER}"],
                                       "x-api-key": ["client-value"]}
    assert key not in got.text()
    [row] = rows(db, "host = ? AND method = 'GET'", ("allowed.test",))
    assert (row["route"], or_empty(row["credential"]), row["status"]) == ("intercept", "", 200)


def test_plain_http_to_a_service_host_gets_no_credential(start_intercepting, secrets, new_key,
                                                         plain_upstream, db):
    key = new_key("openai")
    secrets.set("openai", key)
    proxy = start_intercepting()
    with_placeholder = proxy.curl("http://api.openai.com/v1/models?with",
                                  "-H", f"Authorization: Bearer {PLACEHOLDER}")
    without = proxy.curl("http://api.openai.com/v1/models?without")
    assert (with_placeholder.status, without.status) == (200, 200), (with_placeholder, without)
    first, second = plain_upstream.requests
    assert credential_headers(first) == {"authorization": [f"Bearer {PLACEHOLDER}"]}
    assert credential_headers(second) == {}
    assert key not in first.text() + second.text()
    found = rows(db, "host = ?", ("api.openai.com",), count=2)
    assert [(r["route"], r["scheme"], or_empty(r["credential"])) for r in found] == [
        ("forward", "http", "")] * 2


# --- the key never leaks ---

def test_the_secret_appears_nowhere_but_upstream(start_intercepting, secrets, new_key, run_sbx,
                                                 service_upstream, sbx_ca, sbx_home, db):
    keys = {"openai": new_key("openai"), "anthropic": new_key("anthropic"),
            "dev": new_key("openai")}
    token = add_sandbox(run_sbx, "dev")
    add_rule(run_sbx, "deny", "api.openai.com", "--path", "/v1/files/**")
    secrets.set("openai", keys["openai"])
    secrets.set("anthropic", keys["anthropic"])
    secrets.set("openai", keys["dev"], sandbox="dev")
    proxy = start_intercepting()
    auth = ["-H", f"Authorization: Bearer {PLACEHOLDER}"]
    seen = []
    for url, extra, user, status in [
            ("https://api.openai.com/v1/models", auth, None, 200),
            ("https://api.openai.com/v1/models", auth, ("dev", token), 200),
            ("https://api.anthropic.com/v1/messages", ["-H", "x-api-key: x"], None, 200),
            ("https://api.openai.com/v1/status/500", auth, None, 500),
            ("https://api.openai.com/v1/status/401", auth, None, 401),
            ("https://api.openai.com/v1/files/abc", auth, None, 403),  # denied inside the tunnel
            ("https://api.openai.com/v1/models", auth + ["-H", "Host: api.anthropic.com"], None,
             400)]:
        r = proxy.curl(url, "--cacert", sbx_ca, "-v", *extra, proxy_user=user)
        assert r.status == status, (url, r)
        seen.append(client_saw(r))
    injected = [g for g in service_upstream.requests if credential_headers(g)]
    assert len(injected) == 5, [g.headers for g in service_upstream.requests]
    assert any(keys["dev"] in g.text() for g in injected), "the sandbox key was used"

    sources = {"responses to the client": "\n".join(seen)}
    rows(db, "method != 'CONNECT'", count=7)
    for path in ("/v1/status", "/metrics", "/v1/decisions?limit=1000"):
        code, body = control(sbx_home, "GET", path)
        assert code == 200, (path, body)
        sources[f"control {path}"] = body.decode("latin-1")
    sources["sbx policy log --json"] = ok(run_sbx("policy", "log", "--json")).out
    sources["sbx secret ls"] = ok(run_sbx("secret", "ls")).out
    sources["sbx secret ls --json"] = ok(run_sbx("secret", "ls", "--json")).out

    def db_files():
        files = {}
        for name in ("policy.db", "policy.db-wal", "policy.db-shm"):
            if (sbx_home / name).exists():
                files[name] = (sbx_home / name).read_bytes().decode("latin-1")
        return files

    sources.update({f"{k} (running)": v for k, v in db_files().items()})
    proxy.stop()  # flushes the decision log and checkpoints
    sources.update({f"{k} (stopped)": v for k, v in db_files().items()})
    sources["proxy stderr"] = proxy.stderr_text()
    sources["proxy stdout"] = proxy.stdout_text()

    leaks = []
    for name, key in keys.items():
        random_part = key.rsplit("-", 1)[1]
        for needle in (key, random_part[8:24]):  # the whole key, and a piece from its middle
            leaks += [f"{name} key ({needle}) in {where}" for where, text in sources.items()
                      if needle in text]
    assert not leaks, "\n".join(leaks)


# --- scopes and live changes ---

def test_sandbox_secret_overrides_global_and_changes_apply_at_once(
        start_intercepting, secrets, new_key, run_sbx, service_upstream, sbx_ca, pki, tmp_path,
        db):
    tokens = {"dev": add_sandbox(run_sbx, "dev"), "ci": add_sandbox(run_sbx, "ci")}
    global_key, dev_key = new_key("openai"), new_key("openai")
    secrets.set("openai", global_key)
    secrets.set("openai", dev_key, sandbox="dev")
    proxy = start_intercepting()
    # Trusts the sbx CA and the test CA: works whether the proxy intercepts or tunnels.
    both_cas = bundle(tmp_path, sbx_ca, pki.ca_cert)
    step = 0

    def send(sandbox):
        nonlocal step
        step += 1
        # The sandbox's identity in the proxy URL, as `sbx sandbox env` hands it out; curl
        # sends it as Proxy-Authorization: Basic (a later -x wins over the helper's own).
        proxy_url = (f"http://{sandbox}:{tokens[sandbox]}@127.0.0.1:{proxy.port}" if sandbox
                     else proxy.url)
        r = proxy.curl(f"https://api.openai.com/v1/models?step={step}", "--cacert", both_cas,
                       "-H", f"Authorization: Bearer {PLACEHOLDER}", "-x", proxy_url)
        assert (r.rc, r.status) == (0, 200), (step, sandbox, r)
        [got] = [g for g in service_upstream.requests if g.path.endswith(f"step={step}")]
        return credential_headers(got).get("authorization")

    assert send(None) == [f"Bearer {global_key}"]
    assert send("dev") == [f"Bearer {dev_key}"], "the sandbox's own secret wins"
    assert send("ci") == [f"Bearer {global_key}"], "another sandbox falls back to the global one"

    new_global = new_key("openai")
    secrets.set("openai", new_global, newline=True)  # `echo $KEY | sbx secret set -g openai`
    assert send(None) == [f"Bearer {new_global}"], "a changed secret is used by the next request"
    assert send("dev") == [f"Bearer {dev_key}"]

    new_dev = new_key("openai")
    secrets.set("openai", new_dev, sandbox="dev")
    assert send("dev") == [f"Bearer {new_dev}"]

    secrets.rm("openai", sandbox="dev")
    assert send("dev") == [f"Bearer {new_global}"], "removing the sandbox secret restores global"

    secrets.rm("openai")
    assert send(None) == [f"Bearer {PLACEHOLDER}"], "no secret: nothing injected"
    found = rows(db, "method = 'CONNECT' AND host = ?", ("api.openai.com",), count=step)
    last = found[-1]
    assert (last["route"], or_empty(last["credential"])) == ("tunnel", ""), (
        "with no secret and no path rules the CONNECT is tunnelled")
    request_rows = rows(db, "method = 'GET' AND host = ?", ("api.openai.com",), count=step - 1)
    assert [(or_empty(r["sandbox"]), r["credential"]) for r in request_rows] == [
        ("", "openai"), ("dev", "openai"), ("ci", "openai"), ("", "openai"), ("dev", "openai"),
        ("dev", "openai"), ("dev", "openai")]


def test_secret_changes_apply_to_the_next_request_on_an_open_connection(
        start_intercepting, secrets, new_key, service_upstream, sbx_ca, db):
    first_key, second_key = new_key("openai"), new_key("openai")
    secrets.set("openai", first_key)
    proxy = start_intercepting()
    conn = https_connection(proxy.port, "api.openai.com", sbx_ca)
    headers = {"Authorization": f"Bearer {PLACEHOLDER}"}
    try:
        conn.request("GET", "/v1/models?n=1", headers=headers)
        response = conn.getresponse()
        response.read()
        socket_before = conn.sock
        assert response.status == 200 and not response.will_close

        secrets.set("openai", second_key)
        conn.request("GET", "/v1/models?n=2", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200

        secrets.rm("openai")
        conn.request("GET", "/v1/models?n=3", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        assert conn.sock is socket_before, "all three requests went over one client connection"
    finally:
        conn.close()
    got = service_upstream.requests
    assert [credential_headers(g).get("authorization") for g in got] == [
        [f"Bearer {first_key}"], [f"Bearer {second_key}"], [f"Bearer {PLACEHOLDER}"]]
    found = rows(db, "method = 'GET' AND host = ?", ("api.openai.com",), count=3)
    assert [or_empty(r["credential"]) for r in found] == ["openai", "openai", ""]


# --- unverifiable upstreams get nothing ---

@pytest.mark.parametrize("host, bad", [("api.openai.com", "wrong_name"),
                                       ("api.anthropic.com", "self_signed")])
def test_unverifiable_upstream_gets_502_and_no_request(start_intercepting, secrets, new_key,
                                                       wrong_name_upstream, self_signed_upstream,
                                                       service_upstream, sbx_ca, db, host, bad):
    upstream = {"wrong_name": wrong_name_upstream, "self_signed": self_signed_upstream}[bad]
    service = host.split(".")[1]
    key = new_key(service)
    secrets.set(service, key)
    proxy = start_intercepting({"resolve": {f"{host}:443": upstream.address}})
    r = proxy.curl(f"https://{host}/v1/models", "--cacert", sbx_ca,
                   "-H", f"Authorization: Bearer {PLACEHOLDER}")
    assert (r.rc, r.connect_status, r.status) == (0, 200, 502), r
    assert r.headers.get("X-Proxy-Error") == "upstream-tls-invalid", r.blocks
    assert key not in client_saw(r)
    time.sleep(0.3)
    assert upstream.requests == [], "the upstream received a request"
    assert upstream.handshakes == 0, "the proxy completed a TLS handshake with it"
    assert service_upstream.requests == []
    [row] = rows(db, "host = ? AND method = 'GET'", (host,))
    assert (row["route"], row["status"], or_empty(row["credential"])) == ("intercept", 502, "")


# --- streaming ---

def test_server_sent_events_stream_through_interception(start_intercepting, secrets, new_key,
                                                        service_upstream, sbx_ca):
    key = new_key("openai")
    secrets.set("openai", key)
    proxy = start_intercepting()
    count, gap = 5, 0.3
    conn = https_connection(proxy.port, "api.openai.com", sbx_ca)
    arrivals = []
    try:
        conn.request("GET", f"/v1/sse?n={count}&gap={gap}",
                     headers={"Authorization": f"Bearer {PLACEHOLDER}",
                              "Accept": "text/event-stream"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        while True:
            line = response.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                arrivals.append((time.monotonic(), json.loads(line[6:])))
    finally:
        conn.close()
    sent = service_upstream.sse_sent
    assert [event["i"] for _, event in arrivals] == list(range(count))
    delays = [round(at - sent[event["i"]], 3) for at, event in arrivals]
    assert all(d < 0.2 for d in delays), f"events held back by the proxy: delays {delays}"
    assert arrivals[0][0] < sent[count - 1] - 0.8, "the first event arrived only at the end"
    [got] = service_upstream.requests
    assert credential_headers(got) == {"authorization": [f"Bearer {key}"]}


def test_websocket_echo_through_interception(start_intercepting, secrets, new_key,
                                             service_upstream, sbx_ca, db):
    key = new_key("openai")
    secrets.set("openai", key)
    proxy = start_intercepting()
    messages = ["hello through sbx", "x" * 300]
    with open_tunnel(proxy.port, "api.openai.com", sbx_ca) as tls:
        tls.settimeout(10)
        response, echoed = websocket_roundtrip(tls, "api.openai.com", "/v1/ws", messages,
                                               headers=[("Authorization",
                                                         f"Bearer {PLACEHOLDER}")])
    assert response["status"] == 101, response
    assert response["headers"].get("upgrade", "").lower() == "websocket"
    assert echoed[:-1] == [(0x1, m.encode()) for m in messages]
    assert echoed[-1] == (0x8, (1000).to_bytes(2, "big")), "the close handshake passed through"
    [got] = service_upstream.requests
    assert (got.method, got.path) == ("GET", "/v1/ws")
    assert credential_headers(got) == {"authorization": [f"Bearer {key}"]}
    frames = service_upstream.ws_frames
    assert [(op, payload) for op, payload, _ in frames[:2]] == [(0x1, m.encode()) for m in messages]
    assert all(masked for _, _, masked in frames), "client frames arrive masked, as sent"
    [row] = rows(db, "host = ? AND method = 'GET'", ("api.openai.com",))
    assert (row["status"], row["route"], row["credential"]) == (101, "intercept", "openai")


def _upload_blocks(total, block=64 * 1024):
    chunk = b"u" * block
    while total:
        n = min(total, block)
        yield chunk[:n]
        total -= n


# Under AddressSanitizer (scripts/test-sanitizers) freed memory waits in ASan's quarantine and
# every allocation grows, so a memory bound measures ASan, not the relay: only correctness is
# checked there.
SANITIZED = os.environ.get("SBX_SANITIZED") == "1"


def test_50_mib_each_way_streams_with_bounded_memory(start_intercepting, secrets, new_key,
                                                     service_upstream, sbx_ca, db):
    secrets.set("openai", new_key("openai"))
    proxy = start_intercepting()
    headers = {"Authorization": f"Bearer {PLACEHOLDER}"}
    conn = https_connection(proxy.port, "api.openai.com", sbx_ca, timeout=60)
    try:
        conn.request("GET", "/v1/models", headers=headers)  # warm up: TLS, leaf, buffers
        conn.getresponse().read()
        before = vm_hwm_kib(proxy.pid)

        started = time.monotonic()
        conn.request("POST", "/v1/upload", body=_upload_blocks(BIG_BODY),
                     headers={**headers, "Content-Length": str(BIG_BODY),
                              "Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"received": BIG_BODY, "pattern_ok": True}

        conn.request("GET", f"/v1/download/{BIG_BODY}", headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(BIG_BODY)
        received, pattern_ok = 0, True
        while True:
            block = response.read(256 * 1024)
            if not block:
                break
            received += len(block)
            pattern_ok = pattern_ok and block.count(b"d") == len(block)
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    after = vm_hwm_kib(proxy.pid)
    assert (received, pattern_ok) == (BIG_BODY, True)
    growth = after - before
    if not SANITIZED:
        assert growth < HWM_GROWTH_LIMIT_KIB, (
            f"proxy VmHWM grew by {growth} KiB ({before} -> {after}) relaying 2 x 50 MiB")
        assert elapsed < 60
    upload, download = service_upstream.requests[1:]
    assert (upload.body_len, upload.header("Content-Length")) == (BIG_BODY, str(BIG_BODY))
    assert upload.header("Authorization").startswith("Bearer sk-e2e-openai-")
    assert download.path == f"/v1/download/{BIG_BODY}"
    found = rows(db, "host = ? AND method != 'CONNECT'", ("api.openai.com",), count=3)
    assert found[1]["bytes_up"] >= BIG_BODY and found[2]["bytes_down"] >= BIG_BODY


# --- the leaf cache ---

def test_sequential_connects_reuse_the_cached_leaf(start_intercepting, secrets, new_key,
                                                   service_upstream, sbx_ca, sbx_home):
    secrets.set("openai", new_key("openai"))
    proxy = start_intercepting()
    before = status_counters(sbx_home)
    assert (before["leaf_mints"], before["leaf_cache_hits"]) == (0, 0), before
    connects = 5
    for i in range(connects):
        r = proxy.curl(f"https://api.openai.com/v1/models?i={i}", "--cacert", sbx_ca)
        assert (r.rc, r.status) == (0, 200), r
    after = status_counters(sbx_home)
    assert (after["leaf_mints"], after["leaf_cache_hits"]) == (1, connects - 1), after
    assert len(service_upstream.requests) == connects


# --- upstream connections kept across CONNECTs ---

def upstream_tls_counts(sbx_home):
    """{"handshake": n, "reused": n} from /metrics."""
    code, body = control(sbx_home, "GET", "/metrics")
    assert code == 200, body
    counts = {}
    for line in body.decode().splitlines():
        if line.startswith("sbx_upstream_tls_total{kind="):
            kind = line.split('"')[1]
            counts[kind] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def test_sequential_connects_share_one_verified_upstream_connection(
        start_intercepting, secrets, new_key, service_upstream, sbx_ca, sbx_home, db):
    key = new_key("openai")
    secrets.set("openai", key)
    proxy = start_intercepting(args=["--threads", "1"])
    connects = 4
    for i in range(connects):
        r = proxy.curl(f"https://api.openai.com/v1/models?i={i}", "--cacert", sbx_ca)
        assert (r.rc, r.status) == (0, 200), r
    got = service_upstream.requests
    assert [g.path for g in got] == [f"/v1/models?i={i}" for i in range(connects)]
    # Each CONNECT is its own client connection; upstream they all rode one TLS connection.
    assert len({g.connection for g in got}) == 1, [g.connection for g in got]
    assert service_upstream.handshakes == 1
    assert all(credential_headers(g) == {"authorization": [f"Bearer {key}"]} for g in got)
    assert upstream_tls_counts(sbx_home) == {"handshake": 1, "reused": connects - 1}
    # Every request is still decided and logged on its own.
    found = rows(db, "route = 'intercept' AND method = 'GET'", count=connects)
    assert [row["credential"] for row in found] == ["openai"] * connects


def test_an_upstream_connection_closed_while_idle_is_replaced(
        start_intercepting, secrets, new_key, service_upstream, sbx_ca, sbx_home):
    key = new_key("openai")
    secrets.set("openai", key)
    proxy = start_intercepting(args=["--threads", "1"])
    r = proxy.curl("https://api.openai.com/v1/then-close", "--cacert", sbx_ca)
    assert (r.rc, r.status) == (0, 200), r
    time.sleep(0.3)  # the upstream's FIN reaches the idle pooled connection
    r = proxy.curl("https://api.openai.com/v1/models", "--cacert", sbx_ca)
    assert (r.rc, r.status) == (0, 200), r
    got = service_upstream.requests
    assert [g.path for g in got] == ["/v1/then-close", "/v1/models"]
    assert got[0].connection != got[1].connection
    assert credential_headers(got[1]) == {"authorization": [f"Bearer {key}"]}
    assert upstream_tls_counts(sbx_home) == {"handshake": 2, "reused": 0}


def test_requests_after_the_upstream_closed_a_kept_alive_connection_reach_it_again(
        start_intercepting, secrets, new_key, service_upstream, sbx_ca):
    # One client connection, three requests; the upstream drops its connection after the first
    # (its response said keep-alive). The proxy reconnects to the address it checked, at the port
    # `resolve` maps to, verifies again and injects again.
    key = new_key("openai")
    secrets.set("openai", key)
    proxy = start_intercepting()
    with open_tunnel(proxy.port, "api.openai.com", sbx_ca) as tls:
        for path in ("/v1/then-close", "/v1/models", "/v1/models?again=1"):
            time.sleep(0.2)  # the upstream's FIN arrives before the next request
            response = request_over(tls, "GET", "api.openai.com", path)
            assert response.status == 200, (path, response.status, response.body)
    got = service_upstream.requests
    assert [g.path for g in got] == ["/v1/then-close", "/v1/models", "/v1/models?again=1"]
    assert got[0].connection != got[1].connection == got[2].connection
    assert all(credential_headers(g) == {"authorization": [f"Bearer {key}"]} for g in got)


def test_a_post_that_meets_a_closed_kept_alive_connection_is_not_sent_again(
        start_intercepting, secrets, new_key, service_upstream, sbx_ca):
    # Not idempotent: the proxy cannot know whether it reached the upstream, so it answers 502
    # instead of sending it a second time.
    secrets.set("openai", new_key("openai"))
    proxy = start_intercepting()
    with open_tunnel(proxy.port, "api.openai.com", sbx_ca) as tls:
        assert request_over(tls, "GET", "api.openai.com", "/v1/then-close").status == 200
        time.sleep(0.2)  # the upstream's FIN arrives before the next request
        response = request_over(tls, "POST", "api.openai.com", "/v1/chat/completions")
    assert response.status == 502, (response.status, response.body)
    assert response.get("X-Proxy-Error") == "upstream-unreachable"
    assert [g.path for g in service_upstream.requests] == ["/v1/then-close"]


def test_pooled_connections_are_not_shared_between_sandboxes(
        start_intercepting, secrets, new_key, service_upstream, sbx_ca, sbx_home, run_sbx):
    secrets.set("openai", new_key("openai"))
    tokens = {name: add_sandbox(run_sbx, name) for name in ("alpha", "beta")}
    proxy = start_intercepting(args=["--threads", "1"])
    for name in ("alpha", "beta", "alpha"):
        r = proxy.curl("https://api.openai.com/v1/models", "--cacert", sbx_ca,
                       proxy_user=(name, tokens[name]))
        assert (r.rc, r.status) == (0, 200), r
    got = service_upstream.requests
    assert got[0].connection == got[2].connection != got[1].connection
    assert upstream_tls_counts(sbx_home) == {"handshake": 2, "reused": 1}


def test_concurrent_first_connects_mint_one_leaf(start_intercepting, secrets, new_key,
                                                 service_upstream, sbx_ca, sbx_home):
    secrets.set("anthropic", new_key("anthropic"))
    proxy = start_intercepting()
    clients = 8
    barrier = threading.Barrier(clients)
    results = [None] * clients

    def client(index):
        try:
            # Every CONNECT is answered before the barrier; all ClientHellos go out after it.
            raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            with raw:
                send_connect(raw, "api.anthropic.com")
                barrier.wait(timeout=10)
                context = tls_context(sbx_ca)
                with context.wrap_socket(raw, server_hostname="api.anthropic.com") as tls:
                    response = request_over(tls, "GET", "api.anthropic.com",
                                            f"/v1/models?c={index}")
                    results[index] = response.status
        except Exception as e:  # reported below, with every other client's outcome
            results[index] = repr(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [200] * clients, results
    counters = status_counters(sbx_home)
    assert (counters["leaf_mints"], counters["leaf_cache_hits"]) == (1, clients - 1), counters
    assert len(service_upstream.requests) == clients
