"""A full decision-log queue makes sessions wait for room without stalling their I/O thread.

Another process holds policy.db's write lock (as a stuck `sqlite3` shell would), so the proxy's
log writer cannot commit and its queue (log.queue_capacity, the minimum 16) fills up. With one
I/O thread, a session that blocked its thread on the full queue would stall every other
connection; instead, responses keep coming, the waits are counted, and once the lock is released
every row is written: nothing is dropped.
"""

import concurrent.futures
import http.client
import sqlite3
import time

from e2e_support.cli import add_rule
from e2e_support.intercept_clients import control

REQUESTS = 60  # well past the queue's 16 rows plus the batch the writer holds


def forward(port, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", f"http://allowed.test/echo/bp-{n}", headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def waits(sbx_home):
    status, body = control(sbx_home, "GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith("sbx_decision_log_waits_total "):
            return float(line.split()[1])
    raise AssertionError("no sbx_decision_log_waits_total in /metrics")


def test_full_log_queue_waits_without_stalling_the_thread(start_proxy, run_sbx, sbx_home, db,
                                                          upstreams):
    add_rule(run_sbx, "allow", "allowed.test")
    proxy = start_proxy({"log": {"queue_capacity": 16}}, args=("--threads", "1"))
    assert forward(proxy.port, "first") == 200
    db.wait_rows("SELECT id FROM decisions WHERE path = '/echo/bp-first'")
    assert waits(sbx_home) == 0

    blocker = sqlite3.connect(str(sbx_home / "policy.db"), isolation_level=None, timeout=10)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda n: forward(proxy.port, n), range(REQUESTS)))
        elapsed = time.monotonic() - started
        assert statuses == [200] * REQUESTS
        # Served while the writer is stuck: the thread never waited on the queue.
        assert elapsed < 8, f"{REQUESTS} requests took {elapsed:.1f} s with the log stuck"
        assert waits(sbx_home) > 0
        assert forward(proxy.port, "meanwhile") == 200
        [row] = db.rows("SELECT count(*) AS n FROM decisions WHERE path LIKE '/echo/bp-%'")
        assert row["n"] == 1  # only the first: the lock holds every later row back
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    # Nothing was dropped: every waiting row is written once the lock is gone.
    db.wait_rows("SELECT id FROM decisions WHERE path LIKE '/echo/bp-%'", count=REQUESTS + 2,
                 timeout=15)
    proxy.stop()
    [row] = db.rows("SELECT count(*) AS n FROM decisions WHERE path LIKE '/echo/bp-%'")
    assert row["n"] == REQUESTS + 2
