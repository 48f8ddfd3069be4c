"""Sandbox identity: Proxy-Authorization Basic SANDBOX:TOKEN attributes requests to a sandbox,
bad credentials get 407, sandbox rules apply only to their sandbox, and the header never reaches
an upstream."""

import base64

import pytest

from e2e_support.cli import add_rule, add_sandbox, ok
from e2e_support.clients import poll_until

LIVE_CHANGE_LIMIT_S = 1.5


@pytest.fixture
def sandboxes(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    tokens = {"dev": add_sandbox(run_sbx, "dev"), "ci": add_sandbox(run_sbx, "ci")}
    add_rule(run_sbx, "allow", "allowed.test")
    dev_rule = add_rule(run_sbx, "allow", "other.test", "--sandbox", "dev")
    return tokens, dev_rule


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_auth_required(response_block):
    assert response_block.status == 407
    assert response_block.get("X-Proxy-Error") == "proxy-auth-required"
    # RFC 9110 §11.7.1: a 407 carries the challenge.
    assert (response_block.get("Proxy-Authenticate") or "").startswith("Basic")


def test_valid_token_attributes_the_request_and_is_not_forwarded(sandboxes, proxy, upstreams,
                                                                 db):
    tokens, _ = sandboxes
    r = proxy.curl("http://allowed.test/echo", proxy_user=("dev", tokens["dev"]))
    assert r.status == 200, r
    [received] = upstreams.http.requests
    assert received.header("Proxy-Authorization") is None
    assert tokens["dev"] not in repr(received.headers)

    row = db.wait_rows("SELECT * FROM decisions WHERE host = 'allowed.test'")[-1]
    assert row["sandbox"] == "dev"
    assert tokens["dev"] not in proxy.stderr_text(), "a token never appears in the log"


def test_valid_token_over_connect(sandboxes, proxy, upstreams, pki, db):
    tokens, dev_rule = sandboxes
    r = proxy.curl("https://other.test/echo", "--cacert", pki.ca_cert,
                   proxy_user=("dev", tokens["dev"]))
    assert (r.connect_status, r.status) == (200, 200), r
    assert upstreams.https.requests[0].header("Proxy-Authorization") is None
    row = db.wait_rows("SELECT * FROM decisions WHERE host = 'other.test'")[-1]
    assert (row["sandbox"], row["method"], row["rule"]) == ("dev", "CONNECT", str(dev_rule))


@pytest.mark.parametrize("credentials", [
    "wrong-token", "other-sandbox-token", "unknown-sandbox", "not-base64", "bearer", "no-colon"])
def test_bad_credentials_get_407(sandboxes, proxy, upstreams, db, credentials):
    tokens, _ = sandboxes
    header = {
        "wrong-token": basic("dev", tokens["dev"][:-1] + ("A" if tokens["dev"][-1] != "A"
                                                          else "B")),
        "other-sandbox-token": basic("dev", tokens["ci"]),
        "unknown-sandbox": basic("ghost", tokens["dev"]),
        "not-base64": "Basic !!!not-base64!!!",
        "bearer": f"Bearer {tokens['dev']}",
        "no-colon": "Basic " + base64.b64encode(b"dev").decode(),
    }[credentials]

    r = proxy.curl("http://allowed.test/echo", "--proxy-header", f"Proxy-Authorization: {header}")
    assert_auth_required(r.headers)
    r = proxy.curl("https://allowed.test/echo", "--proxy-header",
                   f"Proxy-Authorization: {header}")
    assert r.connect_status == 407, r
    assert_auth_required(r.block_with_status(407))

    assert upstreams.received() == []
    rows = db.wait_rows("SELECT * FROM decisions WHERE status = 407", count=2)
    assert {row["decision"] for row in rows} == {"deny"}


def test_sandbox_rules_apply_only_to_their_sandbox(sandboxes, proxy, upstreams, db):
    tokens, dev_rule = sandboxes
    assert proxy.curl("http://other.test/echo", proxy_user=("dev", tokens["dev"])).status == 200
    r = proxy.curl("http://other.test/echo", proxy_user=("ci", tokens["ci"]))
    assert (r.status, r.headers.get("X-Proxy-Error")) == (403, "blocked-by-policy")
    r = proxy.curl("http://other.test/echo")
    assert (r.status, r.headers.get("X-Proxy-Error")) == (403, "blocked-by-policy")
    # Global rules apply to everyone.
    assert proxy.curl("http://allowed.test/echo", proxy_user=("ci", tokens["ci"])).status == 200
    assert proxy.curl("http://allowed.test/echo").status == 200

    rows = db.wait_rows("SELECT * FROM decisions WHERE host = 'other.test' ORDER BY id", count=3)
    assert [(r["sandbox"] or "", r["decision"], r["rule"]) for r in rows] == [
        ("dev", "allow", str(dev_rule)), ("ci", "deny", "default"), ("", "deny", "default")]
    assert len(upstreams.http.requests_to("/echo")) == 3


def test_removed_sandbox_loses_access_without_a_restart(run_sbx, sandboxes, proxy):
    tokens, _ = sandboxes
    assert proxy.curl("http://allowed.test/echo", proxy_user=("dev", tokens["dev"])).status == 200
    ok(run_sbx("sandbox", "rm", "dev"))
    poll_until(lambda: proxy.curl("http://allowed.test/echo",
                                  proxy_user=("dev", tokens["dev"])).status == 407,
               timeout=LIVE_CHANGE_LIMIT_S, message="removed sandbox refused")
    # A new sandbox added while the proxy runs is accepted as quickly.
    token = add_sandbox(run_sbx, "fresh")
    poll_until(lambda: proxy.curl("http://allowed.test/echo",
                                  proxy_user=("fresh", token)).status == 200,
               timeout=LIVE_CHANGE_LIMIT_S, message="new sandbox accepted")
