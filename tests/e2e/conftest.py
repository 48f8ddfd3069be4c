"""Fixtures of the sbx end-to-end tests.

Run: SBX_BIN=build/cli/sbx /usr/bin/python3 -m pytest tests/e2e

- sbx_bin      the binary under test ($SBX_BIN, else the first build*/cli/sbx found)
- sbx_home     a fresh, not yet created SBX_HOME; sbx_env the environment sbx children get
- run_sbx      run_sbx(*args, input=None, env=None) -> SbxResult(rc, out, err), with a timeout
- pki          the test CA and certificates (session)
- upstreams    .http, .https (test leaf), .self_signed, .wrong_name, .closed_port (session);
               cleared before every test
- proxy_config the config dict the proxy fixtures write (resolve map + upstream_ca_file)
- start_proxy  start_proxy(config=None, args=(), env=None, wrapper=()) -> ProxyProcess, listening;
               config is merged into proxy_config; wrapper prefixes the command (it must exec the
               proxy); always stopped (SIGTERM, exit 0 checked) or killed afterwards
- proxy        start_proxy() with the defaults
- db           db.rows(sql, params), db.wait_rows(sql, params, count) on $SBX_HOME/policy.db
"""

import collections
import copy
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from e2e_support import certs  # noqa: E402
from e2e_support.clients import curl, db_rows, poll_until, raw_request  # noqa: E402
from e2e_support.proxy_process import ProxyProcess, environment_for  # noqa: E402
from e2e_support.upstream import Upstream, closed_port  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SBX_TIMEOUT_S = 30

SbxResult = collections.namedtuple("SbxResult", "rc out err")


# --- the binary ---

@pytest.fixture(scope="session")
def sbx_bin():
    configured = os.environ.get("SBX_BIN")
    if configured:
        path = pathlib.Path(configured).resolve()
        if not os.access(path, os.X_OK):
            pytest.exit(f"SBX_BIN={configured} is not an executable file", returncode=4)
        return path
    for candidate in sorted(REPO_ROOT.glob("build*/cli/sbx")):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.exit("no sbx binary: build it (BUILD_DIR=build scripts/build --target sbx) and set "
                "SBX_BIN=build/cli/sbx", returncode=4)


@pytest.fixture
def sbx_home(tmp_path):
    # Not created here: sbx must create it (0700) on first use.
    return tmp_path / "sbx-home"


@pytest.fixture
def sbx_env(sbx_home):
    return environment_for(sbx_home)


@pytest.fixture
def run_sbx(sbx_bin, sbx_env):
    def run(*args, input=None, env=None, timeout=SBX_TIMEOUT_S):
        result = subprocess.run([str(sbx_bin), *[str(a) for a in args]], input=input,
                                env=env or sbx_env, capture_output=True, text=True,
                                timeout=timeout)
        return SbxResult(result.returncode, result.stdout, result.stderr)
    return run


# --- PKI and upstreams ---

@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return certs.make_test_pki(tmp_path_factory.mktemp("pki"))


class Upstreams:
    def __init__(self, pki):
        self.http = Upstream()
        self.https = Upstream(pki.leaf_cert, pki.leaf_key)
        self.self_signed = Upstream(pki.self_signed_cert, pki.self_signed_key)
        self.wrong_name = Upstream(pki.wrong_name_cert, pki.wrong_name_key)
        self.closed_port = closed_port()
        self.all = (self.http, self.https, self.self_signed, self.wrong_name)

    def clear(self):
        for upstream in self.all:
            upstream.clear()

    def received(self):
        """Every request any upstream received."""
        return [r for u in self.all for r in u.requests]

    def close(self):
        for upstream in self.all:
            upstream.close()


@pytest.fixture(scope="session")
def _session_upstreams(pki):
    servers = Upstreams(pki)
    yield servers
    servers.close()


@pytest.fixture
def upstreams(_session_upstreams):
    _session_upstreams.clear()
    return _session_upstreams


# --- the proxy ---

def resolve_map(upstreams):
    """Test host names -> local upstreams, as the config's `resolve` (a DNS answer of 127.0.0.1,
    which the proxy must treat as a blocked address unless a rule names the host exactly)."""
    mapping = {}
    for name in certs.LEAF_NAMES:
        mapping[f"{name}:80"] = f"127.0.0.1:{upstreams.http.port}"
        mapping[f"{name}:443"] = f"127.0.0.1:{upstreams.https.port}"
    mapping["self-signed.test:443"] = f"127.0.0.1:{upstreams.self_signed.port}"
    mapping["wrong-name.test:443"] = f"127.0.0.1:{upstreams.wrong_name.port}"
    mapping["unreachable.test:80"] = f"127.0.0.1:{upstreams.closed_port}"
    mapping["unreachable.test:443"] = f"127.0.0.1:{upstreams.closed_port}"
    return mapping


def deep_merge(base, extra):
    merged = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@pytest.fixture
def proxy_config(upstreams, pki):
    return {"resolve": resolve_map(upstreams), "upstream_ca_file": str(pki.ca_cert)}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def start_proxy(request, sbx_bin, sbx_env, proxy_config, tmp_path):
    started = []

    def start(config=None, args=(), env=None, wrapper=()):
        config_file = tmp_path / f"config-{len(started)}.json"
        config_file.write_text(json.dumps(deep_merge(proxy_config, config), indent=2))
        process = ProxyProcess(sbx_bin, env or sbx_env, config_file, extra_args=args,
                               wrapper=wrapper)
        started.append(process)
        process.wait_until_listening()
        return process

    yield start

    failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
                 for when in ("setup", "call"))
    problems = []
    for process in started:
        if not process.running() and process.returncode is None:
            # It ended on its own, and no test stopped it: a crash must not pass unnoticed.
            process.returncode = process.proc.wait()
            if process.returncode != 0:
                problems.append(f"sbx proxy (pid {process.pid}) died during the test with "
                                f"{process.returncode}")
        if process.running():
            process.signal(signal.SIGTERM)
            try:
                process.returncode = process.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                problems.append(f"sbx proxy (pid {process.pid}) ignored SIGTERM for 20 s")
            process._join_readers()
            if process.returncode != 0 and process.returncode is not None:
                problems.append(f"sbx proxy (pid {process.pid}) exited with "
                                f"{process.returncode} after SIGTERM")
        if failed or problems:
            print(f"--- sbx proxy (pid {process.pid}) stderr ---\n{process.stderr_text()}")
    if problems and not failed:
        pytest.fail("; ".join(problems))


@pytest.fixture
def proxy(start_proxy):
    return start_proxy()


# --- the state database ---

class StateDb:
    def __init__(self, home):
        self.file = home / "policy.db"

    def rows(self, sql, params=()):
        return db_rows(self.file, sql, params)

    def wait_rows(self, sql, params=(), count=1, timeout=3.0):
        """Polls until `sql` returns at least `count` rows (the decision log commits in the
        background, shortly after the response)."""
        return poll_until(lambda: (lambda r: r if len(r) >= count else None)(self.rows(sql, params)),
                          timeout=timeout, message=f"{count} row(s) of {sql!r} {params!r}")

    def decisions(self, where="1=1", params=()):
        return self.rows(f"SELECT * FROM decisions WHERE {where} ORDER BY id", params)


@pytest.fixture
def db(sbx_home):
    return StateDb(sbx_home)


# Re-exported for the test modules.
__all__ = ["curl", "raw_request", "poll_until"]
