"""Assertions and shortcuts for running `sbx` commands in tests (with the run_sbx fixture)."""

import json
import re

ADDED_RE = re.compile(r"^Added rule (\d+): (.+)$")
TOKEN_RE = re.compile(r"^Token: ([A-Za-z0-9_-]{43})$", re.M)
DEFAULT_DENY_REASON = "no matching allow rule (default deny)"
# The ts column: RFC 3339 UTC with milliseconds (the decision-log contract).
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RULE_COLUMNS = ["ID", "SCOPE", "DECISION", "RESOURCE", "METHOD", "PATH", "SOURCE"]
SUMMARY_COLUMNS = ["SANDBOX", "HOST", "ROUTE", "DECISION", "RULE", "REASON", "CREDENTIAL",
                   "LAST SEEN", "COUNT"]
SUMMARY_KEYS = {"sandbox", "host", "route", "decision", "rule", "reason", "credential",
                "last_seen", "count"}
DECISION_COLUMNS = {"id", "ts", "sandbox", "client", "method", "scheme", "host", "port", "path",
                    "route", "decision", "rule", "reason", "credential", "status", "bytes_up",
                    "bytes_down", "duration_ms"}
RFC3339_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def ok(result):
    assert result.rc == 0, f"exit {result.rc}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    return result


def usage_error(result):
    assert result.rc == 2, f"exit {result.rc}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    assert result.err.startswith("sbx: "), result.err
    return result


def failure(result):
    assert result.rc == 1, f"exit {result.rc}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    assert result.err.startswith("sbx: "), result.err
    return result


def added(result):
    """[(id, description)] from "Added rule N: ..." lines; every stdout line must be one."""
    ok(result)
    lines = result.out.splitlines()
    matches = [ADDED_RE.match(line) for line in lines]
    assert lines and all(matches), result.out
    return [(int(m.group(1)), m.group(2)) for m in matches]


def add_rule(run_sbx, verb, resource, *extra):
    """`sbx policy allow|deny network RESOURCE ...` for one resource; returns the new rule ID."""
    [(rule_id, _)] = added(run_sbx("policy", verb, "network", resource, *extra))
    return rule_id


def rules(run_sbx, *args):
    return json.loads(ok(run_sbx("policy", "ls", "--json", *args)).out)


def add_sandbox(run_sbx, name):
    """`sbx sandbox add NAME`; returns the token it printed."""
    out = ok(run_sbx("sandbox", "add", name)).out
    match = TOKEN_RE.search(out)
    assert match, out
    return match.group(1)
