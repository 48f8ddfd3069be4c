"""The real Secret Service end to end: a throw-away D-Bus session (dbus-run-session) with an
unlocked gnome-keyring and a scratch HOME (the recipe of tests/keychain/with-keyring.sh), the CLI
storing the key there, the proxy reading it from there and injecting it."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from e2e_support.cli import ok
from e2e_support.intercept_clients import PLACEHOLDER, control
from e2e_support.intercept_fixtures import *  # noqa: F401,F403 - pytest fixtures
from e2e_support.proxy_process import environment_for

KEYRING_TOOLS = ("dbus-run-session", "gnome-keyring-daemon", "gdbus", "secret-tool")


def _gdbus(env, method, *args):
    return subprocess.run(
        ["gdbus", "call", "--session", "--dest", "org.freedesktop.DBus", "--object-path",
         "/org/freedesktop/DBus", "--method", f"org.freedesktop.DBus.{method}", *args],
        env=env, capture_output=True, text=True, timeout=10)


@pytest.fixture
def secret_service_env(tmp_path, sbx_home):
    missing = [tool for tool in KEYRING_TOOLS if shutil.which(tool) is None]
    assert not missing, (f"{missing} not installed (Debian: dbus, gnome-keyring, "
                         "libglib2.0-bin, libsecret-tools; scripts/install-deps --test)")
    scratch = tmp_path / "keyring"
    dirs = {name: scratch / name for name in ("home", "data", "config", "cache", "runtime")}
    for path in dirs.values():
        path.mkdir(parents=True)
    dirs["runtime"].chmod(0o700)
    env = environment_for(sbx_home, {
        "HOME": str(dirs["home"]), "XDG_DATA_HOME": str(dirs["data"]),
        "XDG_CONFIG_HOME": str(dirs["config"]), "XDG_CACHE_HOME": str(dirs["cache"]),
        "XDG_RUNTIME_DIR": str(dirs["runtime"]), "SBX_KEYCHAIN": "secret-service"})
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    # The session lives as long as the shell inside waits on its stdin.
    bus = subprocess.Popen(
        ["dbus-run-session", "--", "sh", "-c",
         'printf "%s\\n" "$DBUS_SESSION_BUS_ADDRESS"; read -r _ || true'],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    keyring_pid = None
    try:
        address = bus.stdout.readline().decode().strip()
        assert address, f"dbus-run-session printed no address: {bus.stderr.read1(4096)!r}"
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        # A non-empty password: with an empty one gnome-keyring asks a GUI prompter instead.
        started = subprocess.run(["gnome-keyring-daemon", "--unlock", "--components=secrets"],
                                 input=b"throwaway", env=env, capture_output=True, timeout=20)
        assert started.returncode == 0, started.stderr
        for line in started.stdout.decode().splitlines():
            name, _, value = line.partition("=")
            if name and value:
                env[name] = value
        deadline = time.monotonic() + 10
        while "true" not in _gdbus(env, "NameHasOwner", "org.freedesktop.secrets").stdout:
            assert time.monotonic() < deadline, "gnome-keyring-daemon did not take the bus name"
            time.sleep(0.05)
        owner = _gdbus(env, "GetConnectionUnixProcessID", "org.freedesktop.secrets").stdout
        # "(uint32 12345,)"
        match = re.search(r"uint32 (\d+)", owner)
        keyring_pid = int(match.group(1)) if match else None
        yield env
    finally:
        if keyring_pid:
            try:
                os.kill(keyring_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        bus.stdin.close()
        try:
            bus.wait(timeout=10)
        except subprocess.TimeoutExpired:
            bus.kill()
            bus.wait()


def test_secret_service_keychain_end_to_end(secret_service_env, run_sbx, start_intercepting,
                                            new_key, service_upstream, sbx_home, sbx_ca, db):
    env = secret_service_env
    key = new_key("openai")
    result = ok(run_sbx("secret", "set", "-g", "openai", input=key, env=env))
    assert key not in result.out + result.err

    found = subprocess.run(["secret-tool", "search", "--all", "application", "sbx"], env=env,
                           capture_output=True, text=True, timeout=10)
    assert found.returncode == 0, found.stderr
    listing = found.stdout + found.stderr
    assert re.search(r"^attribute\.service = openai$", listing, re.M), listing
    assert re.search(r"^attribute\.application = sbx$", listing, re.M), listing
    assert not (sbx_home / "secrets.json").exists(), "the file keychain was used"

    proxy = start_intercepting(env=env)
    status_code, body = control(sbx_home, "GET", "/v1/status")
    status = json.loads(body)
    assert (status_code, status["keychain"], status["secrets"]) == (200, "secret-service", 1)
    r = proxy.curl("https://api.openai.com/v1/models", "--cacert", sbx_ca,
                   "-H", f"Authorization: Bearer {PLACEHOLDER}")
    assert (r.rc, r.status) == (0, 200), r

    # A change through the Secret Service reaches the running proxy for the next request.
    second = new_key("openai")
    ok(run_sbx("secret", "set", "-g", "openai", input=second, env=env))
    r = proxy.curl("https://api.openai.com/v1/models", "--cacert", sbx_ca,
                   "-H", f"Authorization: Bearer {PLACEHOLDER}")
    assert (r.rc, r.status) == (0, 200), r

    got = service_upstream.requests
    assert [g.values("Authorization") for g in got] == [[f"Bearer {key}"], [f"Bearer {second}"]]
    assert key not in proxy.stderr_text() and second not in proxy.stderr_text()
    rows = db.wait_rows("SELECT credential FROM decisions WHERE method = 'GET'", count=2)
    assert [r["credential"] for r in rows] == ["openai", "openai"]
