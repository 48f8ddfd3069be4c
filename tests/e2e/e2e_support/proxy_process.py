"""Runs `sbx proxy` as a child process on a free port and reads its stderr while it runs."""

import os
import re
import signal
import subprocess
import threading
import time

from . import clients

# run_proxy prints this once it accepts connections (proxy/server.hpp); the port is read from it.
LISTENING_RE = re.compile(r"sbx proxy listening on 127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 20


class ProxyExited(RuntimeError):
    pass


class ProxyProcess:
    """A running `sbx proxy`. Always stop()ed or kill()ed by whoever started it."""

    def __init__(self, sbx_bin, env, config_file=None, extra_args=(), listen="127.0.0.1:0",
                 wrapper=()):
        # `wrapper` prefixes the command (e.g. `unshare --mount sh -c '...; exec "$@"' ...`); it
        # must end by exec'ing the proxy, so that pid and signals are the proxy's own.
        args = [str(sbx_bin), "proxy", "--listen", listen]
        if config_file is not None:
            args += ["--config", str(config_file)]
        args += list(extra_args)
        args = [str(a) for a in wrapper] + args
        self.args = args
        self._lines = []
        self._cond = threading.Condition()
        self._stderr_done = False
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        self.returncode = None
        self._stdout_chunks = []
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True, name=f"sbx-{self.pid}-err"),
            threading.Thread(target=self._read_stdout, daemon=True, name=f"sbx-{self.pid}-out"),
        ]
        for reader in self._readers:
            reader.start()
        self.port = None
        self.url = None

    # --- output ---

    def _read_stderr(self):
        for raw in iter(self.proc.stderr.readline, b""):
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._stderr_done = True
            self._cond.notify_all()

    def _read_stdout(self):
        # Drained so the proxy never blocks on a full pipe; the proxy should print nothing here.
        for raw in iter(lambda: self.proc.stdout.read(4096), b""):
            self._stdout_chunks.append(raw)

    def stderr_lines(self):
        with self._cond:
            return list(self._lines)

    def stderr_text(self):
        return "\n".join(self.stderr_lines())

    def stdout_text(self):
        return b"".join(self._stdout_chunks).decode("utf-8", "replace")

    def wait_for_stderr(self, pattern, timeout=10.0, start=0):
        """The first match of `pattern` in stderr lines from index `start` on; raises on timeout or
        when the process exits first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self._lines):
                    match = regex.search(self._lines[index])
                    if match:
                        return match
                    index += 1
                if self._stderr_done:
                    raise ProxyExited(
                        f"sbx proxy exited (code {self.proc.poll()}) before printing "
                        f"{regex.pattern!r}; stderr:\n{self.stderr_text_unlocked()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {regex.pattern!r} on sbx proxy's stderr within "
                                       f"{timeout}s; stderr:\n{self.stderr_text_unlocked()}")
                self._cond.wait(remaining)

    def stderr_text_unlocked(self):
        return "\n".join(self._lines)

    # --- clients ---

    def curl(self, *args, **kwargs):
        """curl through this proxy; see clients.curl."""
        return clients.curl(self.port, *args, **kwargs)

    def raw(self, data, timeout=5.0):
        """Sends raw bytes on a fresh connection and reads one response; see clients.raw_request."""
        return clients.raw_request(self.port, data, timeout=timeout)

    # --- life cycle ---

    def wait_until_listening(self, timeout=START_TIMEOUT_S):
        match = self.wait_for_stderr(LISTENING_RE, timeout=timeout)
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def running(self):
        return self.proc.poll() is None

    def signal(self, signum):
        if self.running():
            self.proc.send_signal(signum)

    def stop(self, expect_code=0, timeout=STOP_TIMEOUT_S):
        """SIGTERM, wait, and check the exit code (a clean stop is exit 0 by contract)."""
        self.signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"sbx proxy did not exit within {timeout}s of SIGTERM; "
                                 f"stderr:\n{self.stderr_text()}")
        self._join_readers()
        if expect_code is not None:
            assert self.returncode == expect_code, (
                f"sbx proxy exited with {self.returncode}, expected {expect_code}; "
                f"stderr:\n{self.stderr_text()}")
        return self.returncode

    def kill(self):
        if self.running():
            self.proc.kill()
        self.returncode = self.proc.wait()
        self._join_readers()

    def _join_readers(self):
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def environment_for(sbx_home, extra=None):
    """The environment every sbx child gets: its own SBX_HOME, the file keychain, no config file
    and no proxy variables from the developer's shell."""
    env = {k: v for k, v in os.environ.items()
           if k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
           and not k.startswith("SBX_")}
    env["SBX_HOME"] = str(sbx_home)
    env["SBX_KEYCHAIN"] = "file"
    # Nothing may fall back to the developer's real state directory.
    env["XDG_STATE_HOME"] = str(sbx_home.parent / "xdg-state")
    # spdlog colours would put escape codes into the lines the tests match.
    env.pop("TERM", None)
    env["NO_COLOR"] = "1"
    if extra:
        env.update(extra)
    return env
