"""Clients for the interception tests: Python's own TLS through a CONNECT tunnel (raw and with
http.client), the control socket, the secret commands and the proxy's memory high-water mark."""

import base64
import http.client
import os
import socket
import ssl

from .clients import RawResponse
from .recording_tls import read_ws_frame, websocket_accept, ws_frame

PLACEHOLDER = "proxy-managed"


def tls_context(*cafiles):
    """A client context that trusts exactly `cafiles` (never the system store)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for cafile in cafiles:
        context.load_verify_locations(cafile=str(cafile))
    return context


def basic_auth(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def open_tunnel(proxy_port, host, cafile, port=443, proxy_user=None, timeout=10.0):
    """CONNECT host:port through the proxy, expect 200, then TLS with SNI `host` verified against
    `cafile`. Returns the TLS socket."""
    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        send_connect(raw, host, port, proxy_user)
        return tls_context(cafile).wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def send_connect(raw, host, port=443, proxy_user=None):
    """Sends CONNECT on `raw` and checks the 200; leaves the socket right after the reply head."""
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if proxy_user:
        head += f"Proxy-Authorization: {basic_auth(*proxy_user)}\r\n"
    raw.sendall(head.encode() + b"\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        # One byte at a time: nothing after the reply head may be consumed here.
        byte = raw.recv(1)
        if not byte:
            raise ConnectionError(f"proxy closed the connection after {data!r}")
        data += byte
    status = int(data.split(b" ", 2)[1])
    if status != 200:
        raise AssertionError(f"CONNECT {host}:{port} answered {data!r}")


def https_connection(proxy_port, host, cafile, proxy_user=None, timeout=15.0):
    """http.client through the proxy (its own CONNECT via set_tunnel), TLS trusting `cafile`."""
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=timeout,
                                       context=tls_context(cafile))
    headers = {"Proxy-Authorization": basic_auth(*proxy_user)} if proxy_user else None
    conn.set_tunnel(host, 443, headers=headers)
    return conn


def request_over(tls_socket, method, host, path, headers=(), body=b"", timeout=10.0):
    """One request on an open TLS socket (keep-alive); returns clients.RawResponse."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    tls_socket.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return read_tls_response(tls_socket, timeout=timeout, head_request=(method == "HEAD"))


def read_tls_response(sock, timeout=10.0, head_request=False):
    """One response (Content-Length, chunked or until close) from a TLS socket, which cannot
    MSG_PEEK like clients.read_response does. `closed` says whether the peer closed after it."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full response head: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    lower = {k.lower(): v for k, v in headers}
    closed = False

    def more():
        nonlocal closed
        chunk = sock.recv(65536)
        closed = not chunk
        return chunk

    if head_request or status < 200 or status in (204, 304):
        body = b""
    elif "content-length" in lower:
        while len(body) < int(lower["content-length"]) and not closed:
            body += more()
    elif "chunked" in lower.get("transfer-encoding", "").lower():
        while not body.endswith(b"0\r\n\r\n") and not closed:
            body += more()
    else:
        while not closed:
            body += more()
    return RawResponse(status, parts[2] if len(parts) > 2 else "", headers, body, data, closed)


def websocket_roundtrip(tls_socket, host, path, messages, headers=()):
    """RFC 6455 handshake on `tls_socket`, then each message as a masked text frame; returns
    (101 response head, [(opcode, payload) received back])."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers]
    tls_socket.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    stream = tls_socket.makefile("rb", buffering=0)
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = stream.read(1)
        if not byte:
            raise ConnectionError(f"closed during the WebSocket handshake: {head!r}")
        head += byte
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    response = {"status": int(status_line.split(" ", 2)[1]),
                "headers": {k.strip().lower(): v.strip()
                            for k, v in (line.split(":", 1) for line in header_lines)}}
    if response["status"] != 101:
        return response, []
    assert response["headers"].get("sec-websocket-accept") == websocket_accept(key), response
    received = []
    for message in messages:
        tls_socket.sendall(ws_frame(0x1, message.encode(), mask=os.urandom(4)))
        frame = read_ws_frame(stream)
        assert frame is not None, "the connection closed instead of echoing"
        received.append((frame[0], frame[1]))
    tls_socket.sendall(ws_frame(0x8, close_payload(1000), mask=os.urandom(4)))
    frame = read_ws_frame(stream)
    received.append((frame[0], frame[1]) if frame else None)
    return response, received


def close_payload(code):
    return code.to_bytes(2, "big")


# --- the control socket ---

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10.0):
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def control(sbx_home, method, path, body=None):
    """(status, body bytes) of one request on $SBX_HOME/sbx.sock."""
    conn = _UnixConnection(sbx_home / "sbx.sock")
    try:
        conn.request(method, path, body=body,
                     headers={"Content-Type": "application/json"} if body is not None else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- memory ---

def vm_hwm_kib(pid):
    """The process's peak resident set size (VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")
