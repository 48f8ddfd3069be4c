"""Fixtures of the interception tests. A test module imports them by name:

    from e2e_support.intercept_fixtures import *  # noqa: F401,F403 - pytest fixtures

- service_upstream   RecordingUpstream with the test leaf (valid for api.openai.com,
                     api.anthropic.com, allowed.test, ...); session-wide, cleared per test
- plain_upstream     the same over plain HTTP (what `http://api.openai.com/...` reaches)
- wrong_name_upstream, self_signed_upstream   upstreams the proxy must refuse to talk to
- intercept_rules    deny-all plus exact-host allow rules for api.openai.com, api.anthropic.com and
                     allowed.test ({host: rule id}); exact hosts so that 127.0.0.1 is permitted
- start_intercepting start_intercepting(config=None, **kw): start_proxy with every service and
                     test host resolved to the recording upstreams
- secrets            secrets.set(service, value, sandbox=None) / secrets.rm(service, sandbox=None)
                     with the `sbx secret` commands
- sbx_ca             $SBX_HOME/ca.pem (exists once a proxy has started)
- new_key            new_key("openai") -> a unique fake key, long enough to search for
"""

import secrets as _random

import pytest

from .cli import add_rule, ok
from .recording_tls import RecordingUpstream

SERVICE_HOSTS = ("api.openai.com", "api.anthropic.com")
TEST_HOSTS = SERVICE_HOSTS + ("allowed.test", "api.github.com")
ALLOWED_HOSTS = ("api.openai.com", "api.anthropic.com", "allowed.test")

__all__ = ["service_upstream", "plain_upstream", "wrong_name_upstream", "self_signed_upstream",
           "intercept_rules", "start_intercepting", "secrets", "sbx_ca", "new_key",
           "_recording_upstreams", "resolve_to"]


class _RecordingUpstreams:
    def __init__(self, pki):
        self.tls = RecordingUpstream(pki.leaf_cert, pki.leaf_key)
        self.plain = RecordingUpstream()
        self.wrong_name = RecordingUpstream(pki.wrong_name_cert, pki.wrong_name_key)
        self.self_signed = RecordingUpstream(pki.self_signed_cert, pki.self_signed_key)
        self.all = (self.tls, self.plain, self.wrong_name, self.self_signed)

    def clear(self):
        for upstream in self.all:
            upstream.clear()

    def close(self):
        for upstream in self.all:
            upstream.close()


@pytest.fixture(scope="session")
def _recording_upstreams(pki):
    servers = _RecordingUpstreams(pki)
    yield servers
    servers.close()


@pytest.fixture
def service_upstream(_recording_upstreams):
    _recording_upstreams.clear()
    return _recording_upstreams.tls


@pytest.fixture
def plain_upstream(_recording_upstreams, service_upstream):
    return _recording_upstreams.plain


@pytest.fixture
def wrong_name_upstream(_recording_upstreams, service_upstream):
    return _recording_upstreams.wrong_name


@pytest.fixture
def self_signed_upstream(_recording_upstreams, service_upstream):
    return _recording_upstreams.self_signed


def resolve_to(tls_upstream, plain_upstream=None, hosts=TEST_HOSTS):
    """A `resolve` config: HOST:443 -> tls_upstream (and HOST:80 -> plain_upstream)."""
    mapping = {f"{host}:443": tls_upstream.address for host in hosts}
    if plain_upstream is not None:
        mapping.update({f"{host}:80": plain_upstream.address for host in hosts})
    return mapping


@pytest.fixture
def intercept_rules(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    return {host: add_rule(run_sbx, "allow", host) for host in ALLOWED_HOSTS}


@pytest.fixture
def start_intercepting(start_proxy, service_upstream, plain_upstream, intercept_rules):
    def start(config=None, **kwargs):
        merged = {"resolve": resolve_to(service_upstream, plain_upstream)}
        for key, value in (config or {}).items():
            if key == "resolve":
                merged["resolve"].update(value)
            else:
                merged[key] = value
        return start_proxy(merged, **kwargs)
    return start


class Secrets:
    """`sbx secret set/rm` as a user types them; the value goes in on stdin (not a terminal)."""

    def __init__(self, run_sbx):
        self.run_sbx = run_sbx

    def set(self, service, value, sandbox=None, newline=False):
        scope = [sandbox] if sandbox else ["-g"]
        result = ok(self.run_sbx("secret", "set", *scope, service,
                                 input=value + ("\n" if newline else "")))
        assert value not in result.out + result.err, "sbx secret set printed the secret"
        return result

    def rm(self, service, sandbox=None):
        return ok(self.run_sbx("secret", "rm", sandbox or "-g", service, "-f"))


@pytest.fixture
def secrets(run_sbx):
    return Secrets(run_sbx)


@pytest.fixture
def sbx_ca(sbx_home):
    return sbx_home / "ca.pem"


@pytest.fixture
def new_key():
    def make(service):
        return f"sk-e2e-{service}-{_random.token_hex(24)}"
    return make
