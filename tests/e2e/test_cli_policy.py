"""`sbx policy|sandbox|status|reset` without a running proxy: output formats, exit codes, and what
ends up in policy.db."""

import datetime
import json
import os
import re
import select
import signal
import sqlite3
import stat
import subprocess
import time

import pytest

from e2e_support.cli import (DECISION_COLUMNS, DEFAULT_DENY_REASON, RFC3339_RE, RULE_COLUMNS,
                             SUMMARY_COLUMNS, SUMMARY_KEYS, TOKEN_RE, add_rule, added, failure,
                             ok, rules, usage_error)
from e2e_support.tables import parse_table

def check(run_sbx, target, *extra):
    return ok(run_sbx("policy", "check", "network", target, *extra)).out.splitlines()


# --- presets ---

def test_fresh_home_is_created_private_and_starts_balanced(run_sbx, sbx_home):
    assert not sbx_home.exists()
    rows = parse_table(ok(run_sbx("policy", "ls")).out, RULE_COLUMNS)
    assert stat.S_IMODE(os.stat(sbx_home).st_mode) == 0o700
    assert (sbx_home / "policy.db").is_file()
    assert rows, "the balanced preset has rules"
    assert {r["SOURCE"] for r in rows} == {"preset"}
    assert {r["SCOPE"] for r in rows} == {"(global)"}
    assert "api.openai.com" in {r["RESOURCE"] for r in rows}
    assert check(run_sbx, "api.openai.com")[0] == "Allowed: api.openai.com:443"
    assert check(run_sbx, "example.invalid")[:2] == [
        "Denied: example.invalid:443", f"Reason: {DEFAULT_DENY_REASON}"]


def test_init_replaces_preset_rules_and_keeps_local_ones(run_sbx):
    local_id = add_rule(run_sbx, "allow", "local.example")

    out = ok(run_sbx("policy", "init", "deny-all")).out
    assert "deny-all" in out
    assert not [r for r in rules(run_sbx) if r["source"] == "preset" and r["decision"] == "allow"]
    assert check(run_sbx, "api.openai.com")[0] == "Denied: api.openai.com:443"
    assert [r["id"] for r in rules(run_sbx) if r["source"] == "local"] == [local_id]
    assert check(run_sbx, "local.example")[0] == "Allowed: local.example:443"

    ok(run_sbx("policy", "init", "allow-all"))
    assert check(run_sbx, "anything.example:8080")[0] == "Allowed: anything.example:8080"

    ok(run_sbx("policy", "init", "balanced"))
    assert check(run_sbx, "api.openai.com")[0] == "Allowed: api.openai.com:443"
    assert check(run_sbx, "anything.example")[0] == "Denied: anything.example:443"
    assert [r["id"] for r in rules(run_sbx) if r["source"] == "local"] == [local_id]

    result = usage_error(run_sbx("policy", "init", "everything"))
    assert "balanced" in result.err and "deny-all" in result.err


# --- allow / deny / ls ---

def test_allow_and_deny_print_new_rule_ids_and_ls_lists_them_aligned(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    [(plain_id, plain)] = added(run_sbx("policy", "allow", "network", "example.com"))
    assert plain == "allow example.com"

    pair = added(run_sbx("policy", "allow", "network", "*.example.org,api.example.net:8443",
                         "--method", "get,POST", "--path", "/v1/**"))
    assert [d for _, d in pair] == ["allow *.example.org --method GET,POST --path /v1/**",
                                    "allow api.example.net:8443 --method GET,POST --path /v1/**"]
    assert plain_id < pair[0][0] < pair[1][0]
    [(deny_id, deny)] = added(run_sbx("policy", "deny", "network", "bad.example.org"))
    assert deny == "deny bad.example.org"

    rows = {int(r["ID"]): r for r in parse_table(ok(run_sbx("policy", "ls")).out, RULE_COLUMNS)}
    assert rows[plain_id] == {"ID": str(plain_id), "SCOPE": "(global)", "DECISION": "allow",
                              "RESOURCE": "example.com", "METHOD": "*", "PATH": "*",
                              "SOURCE": "local"}
    assert rows[pair[0][0]]["RESOURCE"] == "*.example.org"
    assert rows[pair[0][0]]["METHOD"] == "GET,POST"
    assert rows[pair[0][0]]["PATH"] == "/v1/**"
    assert rows[pair[1][0]]["RESOURCE"] == "api.example.net:8443"
    assert rows[deny_id]["DECISION"] == "deny"
    assert list(rows) == sorted(rows)

    # The same rule again is reported, not stored twice.
    result = ok(run_sbx("policy", "allow", "network", "example.com"))
    assert result.out == f"Rule {plain_id} already exists: allow example.com\n"
    assert len(rules(run_sbx)) == len(rows)


def test_ls_json_describes_every_rule(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    plain_id = add_rule(run_sbx, "allow", "example.com")
    http_id = add_rule(run_sbx, "deny", "api.example.com", "--method", "DELETE", "--path",
                       "/admin/**")
    by_id = {r["id"]: r for r in rules(run_sbx)}
    assert set(by_id) == {plain_id, http_id}
    assert by_id[plain_id] == {"id": plain_id, "sandbox": None, "decision": "allow",
                               "resource": "example.com", "methods": [], "path": None,
                               "source": "local"}
    assert by_id[http_id]["methods"] == ["DELETE"]
    assert by_id[http_id]["path"] == "/admin/**"
    assert by_id[http_id]["decision"] == "deny"


@pytest.mark.parametrize("argument, bad", [
    ("good.example,bad..name", "bad..name"),
    ("example.com:70000", "example.com:70000"),
    ("10.0.0.0/33", "10.0.0.0/33"),
    ("good.example, exa mple.com", "exa mple.com"),
    ("ok.example,***.example", "***.example"),
])
def test_bad_resource_is_rejected_with_its_reason_and_nothing_is_stored(run_sbx, argument, bad):
    before = rules(run_sbx)
    result = usage_error(run_sbx("policy", "allow", "network", argument))
    prefix = f'sbx: invalid rule "{bad}": '
    assert result.err.startswith(prefix), result.err
    assert len(result.err.splitlines()[0]) > len(prefix) + 3, "the reason is missing"
    assert result.out == ""
    assert rules(run_sbx) == before


@pytest.mark.parametrize("extra", [["--path", "v1/**"], ["--method", "GE T"]])
def test_bad_method_or_path_is_rejected(run_sbx, extra):
    before = rules(run_sbx)
    result = usage_error(run_sbx("policy", "allow", "network", "example.com", *extra))
    assert result.err.startswith('sbx: invalid rule "example.com": '), result.err
    assert rules(run_sbx) == before


def test_rules_survive_reopening_the_state(run_sbx, sbx_home):
    ok(run_sbx("policy", "init", "deny-all"))
    first = add_rule(run_sbx, "allow", "one.example")
    second = add_rule(run_sbx, "deny", "two.example:8080")
    listing = rules(run_sbx)
    assert [r["id"] for r in listing] == [first, second]
    assert rules(run_sbx) == listing
    # A second, independent reader agrees that the rows are committed (WAL, no open writer).
    connection = sqlite3.connect(str(sbx_home / "policy.db"))
    try:
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        connection.close()
    assert mode.lower() == "wal"
    assert check(run_sbx, "two.example:8080")[0] == "Denied: two.example:8080"


# --- rm ---

def test_rm_by_resource_and_by_id(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    target_id = add_rule(run_sbx, "allow", "example.com")
    other_ids = [i for i, _ in added(run_sbx("policy", "allow", "network", "a.example,b.example"))]

    # The resource is matched in canonical form.
    result = ok(run_sbx("policy", "rm", "network", "--resource", "EXAMPLE.com"))
    assert "example.com" in result.out
    assert target_id not in {r["id"] for r in rules(run_sbx)}
    result = failure(run_sbx("policy", "rm", "network", "--resource", "example.com"))
    assert "no rule" in result.err

    ok(run_sbx("policy", "rm", "--id", other_ids[0]))
    assert {r["id"] for r in rules(run_sbx)} == {other_ids[1]}
    failure(run_sbx("policy", "rm", "--id", other_ids[0]))
    failure(run_sbx("policy", "rm", "--id", 999999))

    usage_error(run_sbx("policy", "rm"))
    usage_error(run_sbx("policy", "rm", "--id", "abc"))
    usage_error(run_sbx("policy", "rm", "network", "--resource", "bad..name"))
    assert {r["id"] for r in rules(run_sbx)} == {other_ids[1]}


# --- check ---

@pytest.fixture
def check_rules(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    return {
        "wildcard": add_rule(run_sbx, "allow", "**.example.com"),
        "deny": add_rule(run_sbx, "deny", "bad.example.com"),
        "cidr": add_rule(run_sbx, "allow", "10.0.0.0/8"),
        "http": add_rule(run_sbx, "allow", "api.example.org", "--method", "GET", "--path",
                         "/v1/**"),
    }


@pytest.mark.parametrize("target, first_line, rule", [
    ("www.example.com", "Allowed: www.example.com:443", "wildcard"),
    ("www.example.com:8443", "Allowed: www.example.com:8443", "wildcard"),
    ("http://www.example.com/some/path?q=1", "Allowed: www.example.com:80", "wildcard"),
    ("https://user:pw@www.example.com/", "Allowed: www.example.com:443", "wildcard"),
    ("WWW.Example.COM.", "Allowed: www.example.com:443", "wildcard"),
    ("bad.example.com", "Denied: bad.example.com:443", "deny"),
    ("http://bad.example.com:8080/", "Denied: bad.example.com:8080", "deny"),
    ("10.1.2.3", "Allowed: 10.1.2.3:443", "cidr"),
    ("10.1.2.3:22", "Allowed: 10.1.2.3:22", "cidr"),
    ("[::1]:8080", "Denied: [::1]:8080", None),
    ("other.org", "Denied: other.org:443", None),
])
def test_check_prints_decision_and_reason(run_sbx, check_rules, target, first_line, rule):
    lines = check(run_sbx, target)
    assert lines[0] == first_line
    assert lines[1].startswith("Reason: ")
    if rule is None:
        assert lines[1] == f"Reason: {DEFAULT_DENY_REASON}"
    else:
        assert f"rule {check_rules[rule]}" in lines[1]
    assert not any(line.startswith("Intercepted:") for line in lines)


def test_check_reports_interception_for_method_and_path_rules(run_sbx, check_rules):
    lines = check(run_sbx, "api.example.org")
    assert lines[0] == "Allowed: api.example.org:443"
    assert "Intercepted: yes (method/path rules)" in lines

    data = json.loads(ok(run_sbx("policy", "check", "network", "api.example.org", "--json")).out)
    assert data == {"target": "api.example.org", "host": "api.example.org", "port": 443,
                    "decision": "allow", "rule": str(check_rules["http"]),
                    "reason": data["reason"], "intercept": True}
    assert f"rule {check_rules['http']}" in data["reason"]


def test_check_json(run_sbx, check_rules):
    out = ok(run_sbx("policy", "check", "network", "http://other.org:81/x", "--json")).out
    assert out.count("\n") == 1
    assert json.loads(out) == {"target": "http://other.org:81/x", "host": "other.org", "port": 81,
                               "decision": "deny", "rule": "default",
                               "reason": DEFAULT_DENY_REASON, "intercept": False}
    data = json.loads(ok(run_sbx("policy", "check", "network", "bad.example.com", "--json")).out)
    assert (data["decision"], data["rule"]) == ("deny", str(check_rules["deny"]))


@pytest.mark.parametrize("target", ["example.com:0", "example.com:99999", "example.com:abc",
                                    "[::1", "http://"])
def test_check_rejects_bad_targets(run_sbx, target):
    result = usage_error(run_sbx("policy", "check", "network", target))
    assert result.out == ""


def test_check_refuses_blocked_addresses_unless_named_exactly(run_sbx, tmp_path, sbx_env):
    ok(run_sbx("policy", "init", "deny-all"))
    add_rule(run_sbx, "allow", "**.test")
    config = tmp_path / "resolve.json"
    config.write_text(json.dumps({"resolve": {"private.test:443": "127.0.0.1:9",
                                              "public.test:443": "192.0.2.10:443"}}))

    lines = check(run_sbx, "private.test", "--config", config)
    assert lines[0] == "Denied: private.test:443"
    assert lines[1] != f"Reason: {DEFAULT_DENY_REASON}"
    assert check(run_sbx, "public.test", "--config", config)[0] == "Allowed: public.test:443"
    # SBX_CONFIG is honoured the same way.
    env = dict(sbx_env, SBX_CONFIG=str(config))
    assert ok(run_sbx("policy", "check", "network", "private.test", env=env)).out.startswith(
        "Denied: private.test:443\n")
    # Without the resolve map, no DNS is asked: the name rule decides.
    assert check(run_sbx, "private.test")[0] == "Allowed: private.test:443"

    exact = add_rule(run_sbx, "allow", "private.test")
    lines = check(run_sbx, "private.test", "--config", config)
    assert lines[0] == "Allowed: private.test:443"
    assert f"rule {exact}" in lines[1]

    ok(run_sbx("policy", "init", "allow-all"))
    assert check(run_sbx, "127.0.0.1")[0] == "Denied: 127.0.0.1:443"
    assert check(run_sbx, "192.168.1.1:80")[0] == "Denied: 192.168.1.1:80"
    assert check(run_sbx, "[::1]")[0] == "Denied: [::1]:443"
    assert check(run_sbx, "192.0.2.1")[0] == "Allowed: 192.0.2.1:443"
    add_rule(run_sbx, "allow", "127.0.0.1")
    assert check(run_sbx, "127.0.0.1:8080")[0] == "Allowed: 127.0.0.1:8080"


def test_check_with_a_broken_config_fails_with_the_key_named(run_sbx, tmp_path):
    config = tmp_path / "bad.json"
    config.write_text('{"limts": {}}')
    result = failure(run_sbx("policy", "check", "network", "example.com", "--config", config))
    assert "limts" in result.err


# --- sandboxes ---

def test_sandbox_add_prints_the_token_once_and_stores_only_its_hash(run_sbx, sbx_home):
    result = ok(run_sbx("sandbox", "add", "dev"))
    match = TOKEN_RE.search(result.out)
    assert match, result.out
    token = match.group(1)
    # Shown once; since the keychain task the token may also be kept there for `sbx sandbox env`.
    assert "will not be shown again" in result.out or "keychain" in result.out
    assert f"http://dev:{token}@127.0.0.1:3128" in result.out
    assert result.err == ""

    stored = b"".join(p.read_bytes() for p in sbx_home.iterdir() if p.name.startswith("policy.db"))
    assert token.encode() not in stored

    second = TOKEN_RE.search(ok(run_sbx("sandbox", "add", "ci")).out).group(1)
    assert second != token

    rows = parse_table(ok(run_sbx("sandbox", "ls")).out, ["NAME", "CREATED", "SOURCES"])
    assert sorted(r["NAME"] for r in rows) == ["ci", "dev"]
    assert all(RFC3339_RE.match(r["CREATED"]) for r in rows), rows
    assert all(r["SOURCES"] == "-" for r in rows), rows
    listing = json.loads(ok(run_sbx("sandbox", "ls", "--json")).out)
    assert sorted(s["name"] for s in listing) == ["ci", "dev"]
    assert all(set(s) == {"name", "created", "sources"} and s["sources"] == [] for s in listing)
    assert token not in ok(run_sbx("sandbox", "ls")).out


def test_sandbox_add_refuses_duplicates_and_bad_names(run_sbx):
    ok(run_sbx("sandbox", "add", "dev"))
    assert "already exists" in failure(run_sbx("sandbox", "add", "dev")).err
    for name in ("Upper", "has space", "a" * 64, "dot.name"):
        result = usage_error(run_sbx("sandbox", "add", name))
        assert result.out == ""
    names = [s["name"] for s in json.loads(ok(run_sbx("sandbox", "ls", "--json")).out)]
    assert names == ["dev"]


def test_sandbox_rules_apply_only_to_that_sandbox_and_go_with_it(run_sbx):
    ok(run_sbx("policy", "init", "deny-all"))
    ok(run_sbx("sandbox", "add", "dev"))
    ok(run_sbx("sandbox", "add", "ci"))
    global_id = add_rule(run_sbx, "allow", "shared.example")
    [(dev_id, description)] = added(
        run_sbx("policy", "allow", "network", "dev-only.example", "--sandbox", "dev"))
    assert description.startswith("allow dev-only.example")
    assert "dev" in description.removeprefix("allow dev-only.example")

    rows = {int(r["ID"]): r for r in parse_table(ok(run_sbx("policy", "ls")).out, RULE_COLUMNS)}
    assert rows[dev_id]["SCOPE"] == "dev"
    assert rows[global_id]["SCOPE"] == "(global)"
    assert {r["id"] for r in rules(run_sbx, "--sandbox", "dev")} == {global_id, dev_id}
    assert {r["id"] for r in rules(run_sbx, "--sandbox", "ci")} == {global_id}
    assert [r["sandbox"] for r in rules(run_sbx) if r["id"] == dev_id] == ["dev"]

    assert check(run_sbx, "dev-only.example")[0] == "Denied: dev-only.example:443"
    assert check(run_sbx, "dev-only.example", "--sandbox", "dev")[0] == \
        "Allowed: dev-only.example:443"
    assert check(run_sbx, "dev-only.example", "--sandbox", "ci")[0] == \
        "Denied: dev-only.example:443"
    assert check(run_sbx, "shared.example", "--sandbox", "ci")[0] == "Allowed: shared.example:443"

    before = rules(run_sbx)
    assert "ghost" in failure(run_sbx("policy", "allow", "network", "x.example", "--sandbox",
                                      "ghost")).err
    assert rules(run_sbx) == before

    ok(run_sbx("sandbox", "rm", "dev"))
    assert dev_id not in {r["id"] for r in rules(run_sbx)}
    assert "dev" not in {s["name"] for s in json.loads(ok(run_sbx("sandbox", "ls", "--json")).out)}
    assert "no sandbox" in failure(run_sbx("sandbox", "rm", "dev")).err


# --- the decision log, read from rows written straight into policy.db ---

def _ts(delta):
    moment = datetime.datetime.now(datetime.timezone.utc) + delta
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def insert_decisions(db_file, rows):
    defaults = {"sandbox": "", "client": "127.0.0.1:40000", "method": "GET", "scheme": "http",
                "port": 80, "path": "/", "route": "forward", "decision": "allow",
                "rule": "default", "reason": "", "credential": "", "status": 200,
                "bytes_up": 0, "bytes_down": 0, "duration_ms": 1}
    connection = sqlite3.connect(str(db_file), timeout=5)
    try:
        for row in rows:
            full = dict(defaults, **row)
            columns = ", ".join(full)
            marks = ", ".join("?" for _ in full)
            connection.execute(f"INSERT INTO decisions ({columns}) VALUES ({marks})",
                               list(full.values()))
        connection.commit()
    finally:
        connection.close()


@pytest.fixture
def logged(run_sbx, sbx_home):
    ok(run_sbx("policy", "ls"))  # creates policy.db
    insert_decisions(sbx_home / "policy.db", [
        {"ts": _ts(datetime.timedelta(days=-2)), "host": "old.test", "decision": "deny",
         "status": 403, "reason": DEFAULT_DENY_REASON},
        {"ts": _ts(datetime.timedelta(minutes=-3)), "host": "allowed.test", "path": "/a",
         "rule": "7", "reason": "allowed by rule 7 (allow allowed.test)", "bytes_up": 10,
         "bytes_down": 2048, "duration_ms": 15},
        {"ts": _ts(datetime.timedelta(minutes=-2)), "host": "allowed.test", "path": "/b",
         "method": "POST", "rule": "7", "reason": "allowed by rule 7 (allow allowed.test)",
         "status": 201},
        {"ts": _ts(datetime.timedelta(minutes=-1)), "host": "blocked.test", "method": "CONNECT",
         "scheme": "https", "port": 443, "path": "", "route": "tunnel", "decision": "deny",
         "status": 403, "reason": DEFAULT_DENY_REASON},
        {"ts": _ts(datetime.timedelta(seconds=-5)), "host": "api.openai.com", "sandbox": "dev",
         "scheme": "https", "port": 443, "path": "/v1/models", "route": "intercept",
         "rule": "1", "reason": "allowed by rule 1 (allow api.openai.com)",
         "credential": "openai"},
    ])


def json_lines(out):
    return [json.loads(line) for line in out.splitlines()]


def test_log_groups_by_host_blocked_first(run_sbx, logged):
    rows = parse_table(ok(run_sbx("policy", "log")).out, SUMMARY_COLUMNS)
    assert {r["HOST"] for r in rows} == {"old.test", "allowed.test", "blocked.test",
                                         "api.openai.com"}
    decisions = [r["DECISION"] for r in rows]
    assert decisions == sorted(decisions, key=lambda d: d != "deny"), "blocked rows come first"
    by_host = {r["HOST"]: r for r in rows}
    assert by_host["allowed.test"]["COUNT"] == "2"
    assert by_host["allowed.test"]["RULE"] == "7"
    assert by_host["allowed.test"]["SANDBOX"] == "-"
    assert by_host["api.openai.com"]["SANDBOX"] == "dev"
    assert by_host["api.openai.com"]["CREDENTIAL"] == "openai"
    assert by_host["api.openai.com"]["ROUTE"] == "intercept"
    assert by_host["blocked.test"]["ROUTE"] == "tunnel"
    assert RFC3339_RE.match(by_host["blocked.test"]["LAST SEEN"])

    lines = json_lines(ok(run_sbx("policy", "log", "--json")).out)
    assert all(set(line) == SUMMARY_KEYS for line in lines)
    assert {line["host"]: line["count"] for line in lines}["allowed.test"] == 2


def test_log_events_show_each_request(run_sbx, logged):
    out = ok(run_sbx("policy", "log", "--events")).out
    header = out.splitlines()[0].split()
    for column in ("METHOD", "PATH", "STATUS", "HOST", "DECISION"):
        assert column in header
    assert "/a" in out and "/b" in out and "2048" in out and "15" in out
    assert out.index("allowed.test") < out.index("api.openai.com"), "oldest first"

    events = json_lines(ok(run_sbx("policy", "log", "--events", "--json")).out)
    assert len(events) == 5
    assert all(set(e) == DECISION_COLUMNS for e in events)
    first = [e for e in events if e["path"] == "/a"][0]
    assert (first["method"], first["status"], first["bytes_up"], first["bytes_down"],
            first["duration_ms"]) == ("GET", 200, 10, 2048, 15)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)

    limited = json_lines(ok(run_sbx("policy", "log", "--events", "--json", "--limit", "2")).out)
    assert [e["host"] for e in limited] == ["blocked.test", "api.openai.com"]


def test_log_filters(run_sbx, logged):
    def hosts(*args):
        return {e["host"] for e in json_lines(ok(run_sbx("policy", "log", "--events", "--json",
                                                         *args)).out)}

    assert hosts("--blocked") == {"old.test", "blocked.test"}
    assert hosts("--allowed") == {"allowed.test", "api.openai.com"}
    assert hosts("--host", "blocked.*") == {"blocked.test"}
    assert hosts("--host", "*.OPENAI.com") == {"api.openai.com"}
    assert hosts("--since", "1h") == {"allowed.test", "blocked.test", "api.openai.com"}
    assert hosts("dev") == {"api.openai.com"}
    summary = json_lines(ok(run_sbx("policy", "log", "--blocked", "--json")).out)
    assert {s["host"] for s in summary} == {"old.test", "blocked.test"}

    result = usage_error(run_sbx("policy", "log", "--since", "yesterday-ish"))
    assert 'invalid --since value "yesterday-ish"' in result.err
    usage_error(run_sbx("policy", "log", "--blocked", "--allowed"))
    usage_error(run_sbx("policy", "log", "--limit", "-1"))


def _read_line(proc, timeout):
    """One line from proc.stdout within timeout seconds (raw fd reads: no buffering surprises)."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no complete line within {timeout}s (got {data!r})")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                raise AssertionError(f"sbx exited (got {data!r})")
            data += chunk
    return data.decode()


def test_log_follow_prints_new_rows_until_sigterm(sbx_bin, sbx_env, sbx_home, logged):
    proc = subprocess.Popen([str(sbx_bin), "policy", "log", "-f", "--json", "--host", "*.test"],
                            env=sbx_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = [json.loads(_read_line(proc, 5))["host"] for _ in range(4)]
        assert seen == ["old.test", "allowed.test", "allowed.test", "blocked.test"]
        started = time.monotonic()
        insert_decisions(sbx_home / "policy.db", [
            {"ts": _ts(datetime.timedelta()), "host": "late.test", "path": "/late"},
            {"ts": _ts(datetime.timedelta()), "host": "api.openai.com", "path": "/filtered"},
        ])
        line = json.loads(_read_line(proc, 2))
        assert (line["host"], line["path"]) == ("late.test", "/late")
        assert time.monotonic() - started < 1.5
        assert set(line) == DECISION_COLUMNS
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stdout.read() == b"", "the filtered row must not be printed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- status, reset, usage ---

def test_status_without_a_proxy(run_sbx, sbx_home):
    result = run_sbx("status")
    assert result.rc == 1
    assert result.out == f"sbx proxy is not running (no control socket at {sbx_home}/sbx.sock)\n"
    result = run_sbx("status", "--json")
    assert result.rc == 1
    assert json.loads(result.out)["running"] is False


def test_reset_requires_force_and_deletes_only_state_files(run_sbx, sbx_home):
    ok(run_sbx("sandbox", "add", "dev"))
    for name in ("ca.pem", "ca-key.pem", "secrets.json", "notes.txt"):
        (sbx_home / name).write_text("x")

    result = usage_error(run_sbx("reset"))
    assert "-f" in result.err
    assert (sbx_home / "policy.db").exists() and (sbx_home / "ca.pem").exists()

    ok(run_sbx("reset", "-f", "--preserve-secrets"))
    remaining = {p.name for p in sbx_home.iterdir()}
    # The file keychain may keep a lock file beside secrets.json; it goes with it.
    assert {"secrets.json", "notes.txt"} <= remaining
    assert all(name == "notes.txt" or name.startswith("secrets.json") for name in remaining)

    ok(run_sbx("reset", "--force"))
    assert {p.name for p in sbx_home.iterdir()} == {"notes.txt"}

    # Next use starts over: no sandboxes, the default preset.
    assert json.loads(ok(run_sbx("sandbox", "ls", "--json")).out) == []
    assert {r["source"] for r in rules(run_sbx)} == {"preset"}


@pytest.mark.parametrize("args", [
    [], ["bogus"], ["policy"], ["policy", "allow"], ["policy", "allow", "network"],
    ["policy", "allow", "host", "example.com"], ["policy", "log", "--limit", "x"],
    ["sandbox", "add"], ["sandbox", "add", "a", "b"], ["proxy", "--threads", "x"],
    ["policy", "ls", "--bogus"],
])
def test_usage_errors_exit_2_and_point_at_help(run_sbx, args):
    result = usage_error(run_sbx(*args))
    assert "--help" in result.err
    assert result.out == ""


def test_version_and_help(run_sbx):
    result = ok(run_sbx("--version"))
    assert re.match(r"^sbx \d+\.\d+\.\d+", result.out)
    top = ok(run_sbx("--help")).out
    for command in ("proxy", "policy", "sandbox", "status", "reset"):
        assert command in top
    assert "--method" in ok(run_sbx("policy", "allow", "network", "--help")).out
    assert "--follow" in ok(run_sbx("policy", "log", "--help")).out
    assert "--listen" in ok(run_sbx("proxy", "--help")).out
    assert "--preserve-secrets" in ok(run_sbx("reset", "--help")).out
