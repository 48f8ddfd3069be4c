"""Real clients besides curl get the key injected: Python's urllib.request (ProxyHandler + an ssl
context trusting the sbx CA) and Node's fetch through undici's ProxyAgent (tests/e2e/clients/).
What counts is what the recording upstream received."""

import json
import pathlib
import shutil
import subprocess
import urllib.request

from e2e_support.cli import add_sandbox
from e2e_support.intercept_clients import PLACEHOLDER, tls_context
from e2e_support.intercept_fixtures import *  # noqa: F401,F403 - pytest fixtures

E2E_DIR = pathlib.Path(__file__).resolve().parent
NODE_CLIENT = E2E_DIR / "clients" / "fetch_through_proxy.mjs"


def credential_headers(recorded):
    found = {}
    for name, value in recorded.headers:
        if name.lower() in ("authorization", "x-api-key"):
            found.setdefault(name.lower(), []).append(value)
    return found


def test_python_urllib_gets_the_key_injected(start_intercepting, secrets, new_key, run_sbx,
                                             service_upstream, sbx_ca, db):
    token = add_sandbox(run_sbx, "dev")
    global_key, dev_key = new_key("openai"), new_key("openai")
    secrets.set("openai", global_key)
    secrets.set("openai", dev_key, sandbox="dev")
    proxy = start_intercepting()
    replies = []
    for who, proxy_url in [("anonymous", f"http://127.0.0.1:{proxy.port}"),
                           ("dev", f"http://dev:{token}@127.0.0.1:{proxy.port}")]:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": proxy_url}),
            urllib.request.HTTPSHandler(context=tls_context(sbx_ca)))
        request = urllib.request.Request(
            f"https://api.openai.com/v1/chat/completions?who={who}", method="POST",
            data=b'{"model": "gpt-test"}',
            headers={"Authorization": f"Bearer {PLACEHOLDER}",
                     "Content-Type": "application/json"})
        with opener.open(request, timeout=15) as response:
            replies.append((response.status, response.read()))
    assert [status for status, _ in replies] == [200, 200], replies
    assert not any(k.encode() in body for k in (global_key, dev_key) for _, body in replies)

    anonymous, dev = service_upstream.requests
    assert anonymous.path.endswith("who=anonymous") and dev.path.endswith("who=dev")
    assert credential_headers(anonymous) == {"authorization": [f"Bearer {global_key}"]}
    assert credential_headers(dev) == {"authorization": [f"Bearer {dev_key}"]}
    assert dev.header("Proxy-Authorization") is None
    assert anonymous.body == dev.body == b'{"model": "gpt-test"}'
    rows = db.wait_rows("SELECT sandbox, credential FROM decisions WHERE method = 'POST' "
                        "ORDER BY id", count=2)
    assert [(r["sandbox"] or "", r["credential"]) for r in rows] == [("", "openai"),
                                                                     ("dev", "openai")]


def run_node(spec):
    node = shutil.which("node")
    assert node, "node is not installed (scripts/install-deps --test installs nodejs)"
    assert (E2E_DIR / "node_modules" / "undici" / "package.json").exists(), (
        "undici is missing: run `npm ci` in tests/e2e (scripts/test does)")
    result = subprocess.run([node, str(NODE_CLIENT), json.dumps(spec)], cwd=E2E_DIR,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"node failed:\n{result.stderr}"
    return json.loads(result.stdout)


def test_node_fetch_through_undici_proxy_agent_gets_the_key_injected(
        start_intercepting, secrets, new_key, run_sbx, service_upstream, sbx_ca, db):
    token = add_sandbox(run_sbx, "dev")
    global_key, dev_key = new_key("anthropic"), new_key("anthropic")
    secrets.set("anthropic", global_key)
    secrets.set("anthropic", dev_key, sandbox="dev")
    proxy = start_intercepting()
    anonymous = f"http://127.0.0.1:{proxy.port}"
    as_dev = f"http://dev:{token}@127.0.0.1:{proxy.port}"
    body = '{"model":"claude-test","max_tokens":1,"messages":[]}'
    common = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
    results = run_node({"ca": str(sbx_ca), "requests": [
        # Anthropic's SDK 1.x sends Authorization: Bearer, 0.x sends x-api-key.
        {"proxy": anonymous, "url": "https://api.anthropic.com/v1/messages?n=1", "method": "POST",
         "headers": {**common, "authorization": f"Bearer {PLACEHOLDER}"}, "body": body},
        {"proxy": as_dev, "url": "https://api.anthropic.com/v1/messages?n=2", "method": "POST",
         "headers": {**common, "x-api-key": PLACEHOLDER}, "body": body},
        {"proxy": anonymous, "url": "https://api.anthropic.com/v1/models?n=3"},
    ]})
    assert [r["status"] for r in results] == [200, 200, 200], results
    assert not any(k in json.dumps(results) for k in (global_key, dev_key))

    got = {g.path.rsplit("n=", 1)[1]: g for g in service_upstream.requests}
    assert sorted(got) == ["1", "2", "3"]
    assert credential_headers(got["1"]) == {"authorization": [f"Bearer {global_key}"]}
    assert credential_headers(got["2"]) == {"x-api-key": [dev_key]}
    assert credential_headers(got["3"]) == {"x-api-key": [global_key]}, "default form added"
    assert all(PLACEHOLDER not in g.text() for g in got.values())
    assert got["1"].body == body.encode()
    rows = db.wait_rows("SELECT sandbox, credential, route FROM decisions WHERE method != "
                        "'CONNECT' ORDER BY id", count=3)
    assert sorted((r["sandbox"] or "", r["credential"], r["route"]) for r in rows) == [
        ("", "anthropic", "intercept"), ("", "anthropic", "intercept"),
        ("dev", "anthropic", "intercept")]
