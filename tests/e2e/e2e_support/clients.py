"""Clients that talk through the proxy: curl (the real client most sandboxes use), a raw socket for
bytes no well-behaved client would send, and a reader for policy.db."""

import dataclasses
import os
import socket
import sqlite3
import subprocess
import tempfile
import time

CURL_MAX_TIME_S = 15


@dataclasses.dataclass
class HeaderBlock:
    status: int
    reason: str
    headers: list  # [(name, value)]

    def get(self, name, default=None):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default


@dataclasses.dataclass
class CurlResult:
    rc: int  # curl's exit code (0, or e.g. 56 when a CONNECT was refused)
    status: int  # %{http_code}: the final response's status, 0 if none
    connect_status: int  # %{http_connect}: the proxy's answer to CONNECT, 0 if no CONNECT
    blocks: list  # HeaderBlock for every response head curl saw (CONNECT reply first)
    body: bytes
    stderr: str

    @property
    def headers(self):
        """The final response's headers."""
        return self.blocks[-1] if self.blocks else HeaderBlock(0, "", [])

    def block_with_status(self, status):
        for block in self.blocks:
            if block.status == status:
                return block
        raise AssertionError(f"no response with status {status} in {self.blocks}")

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


def parse_header_dump(data):
    """Splits curl's --dump-header output into one HeaderBlock per response head."""
    blocks = []
    for line in data.decode("latin-1").split("\r\n"):
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            blocks.append(HeaderBlock(int(parts[1]), parts[2] if len(parts) > 2 else "", []))
        elif line and blocks and ":" in line:
            name, value = line.split(":", 1)
            blocks[-1].headers.append((name.strip(), value.strip()))
    return blocks


def curl(proxy_port, *args, proxy_user=None, timeout=CURL_MAX_TIME_S, input=None, env=None):
    """curl through the proxy at 127.0.0.1:proxy_port. `args` are ordinary curl arguments (URL,
    -X, -H, --cacert, ...)."""
    with tempfile.TemporaryDirectory(prefix="sbx-curl-") as tmp:
        header_file = os.path.join(tmp, "headers")
        body_file = os.path.join(tmp, "body")
        command = ["curl", "-sS", "--noproxy", "", "-x", f"http://127.0.0.1:{proxy_port}",
                   "--max-time", str(timeout), "-D", header_file, "-o", body_file,
                   "-w", "%{http_code} %{http_connect}"]
        if proxy_user is not None:
            command += ["--proxy-user", f"{proxy_user[0]}:{proxy_user[1]}"]
        command += [str(a) for a in args]
        child_env = {k: v for k, v in (env or os.environ).items()
                     if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        result = subprocess.run(command, capture_output=True, timeout=timeout + 10, input=input,
                                env=child_env)
        codes = result.stdout.decode().split()
        headers = open(header_file, "rb").read() if os.path.exists(header_file) else b""
        body = open(body_file, "rb").read() if os.path.exists(body_file) else b""
    return CurlResult(rc=result.returncode, status=int(codes[0]) if codes else 0,
                      connect_status=int(codes[1]) if len(codes) > 1 else 0,
                      blocks=parse_header_dump(headers), body=body,
                      stderr=result.stderr.decode("utf-8", "replace"))


@dataclasses.dataclass
class RawResponse:
    status: int
    reason: str
    headers: list  # [(name, value)]
    body: bytes
    raw: bytes
    closed: bool  # the proxy closed the connection after the response

    def get(self, name, default=None):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default


def read_response(sock, timeout=5.0, head_request=False):
    """Reads one HTTP/1.1 response from `sock`: head, then a Content-Length or chunked body, or
    until the peer closes. Returns a RawResponse; raises TimeoutError if no full head arrives."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full response head: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = []
    for line in lines[1:]:
        name, value = line.split(":", 1)
        headers.append((name.strip(), value.strip()))
    lower = {k.lower(): v for k, v in headers}
    closed = False
    body = rest
    if head_request or status < 200 or status in (204, 304):
        body = b""
    elif "content-length" in lower:
        length = int(lower["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            body += chunk
        body = body[:length]
    elif "chunked" in lower.get("transfer-encoding", "").lower():
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            body += chunk
    else:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            body += chunk
    if not closed:
        # A proxy that answers an error and closes: notice the close if it comes promptly.
        sock.settimeout(0.3)
        try:
            closed = sock.recv(1, socket.MSG_PEEK) == b""
        except (socket.timeout, BlockingIOError):
            closed = False
        except (ConnectionResetError, OSError):
            closed = True
    return RawResponse(status, parts[2] if len(parts) > 2 else "", headers, body, data, closed)


def raw_request(port, data, timeout=5.0):
    """Sends `data` as-is to 127.0.0.1:port on a fresh connection and reads one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout=timeout)


def db_rows(db_file, sql, params=()):
    """Rows of `sql` on policy.db as dicts. A plain sqlite3 reader, as any user would use."""
    connection = sqlite3.connect(str(db_file), timeout=5)
    try:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(sql, params).fetchall()]
    finally:
        connection.close()


def poll_until(check, timeout=3.0, interval=0.05, message="condition"):
    """Calls check() until it returns a truthy value (returned) or the timeout passes."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} not reached within {timeout}s (last: {last!r})")
        time.sleep(interval)
