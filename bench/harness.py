#!/usr/bin/python3
"""Runs the sbx-proxy benchmarks: bench/run builds and installs, then hands over to this script.

Everything runs on 127.0.0.1 in a temporary directory: a bench CA and leaf (openssl CLI), nginx
as the TLS/plain origin, sbx_bench_upstream for the event stream, sbx and each peer proxy on its
own port. Every scenario runs for each proxy right after a direct run of the same scenario (A B A B
over several rounds), so ratio = proxy / direct of the same round, and the table reports medians.
The proxy's CPU time and peak RSS come from /proc, read by the load generator over the measured
window only. Every process started here is stopped by PID on exit.

Standard library only: this runs with Debian's /usr/bin/python3 on a fresh machine.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_BEGIN = "<!-- bench:begin (written by bench/run; edit outside these markers) -->"
RESULTS_END = "<!-- bench:end -->"
SECRET = "sk-bench-not-a-real-key"
JSON_BODY = '{"id":"bench-0001","object":"chat.completion","model":"bench","choices":[{"index":0}]}'
BULK_BYTES = 10 * 1024 * 1024
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10
# The open file limit here cannot be raised above the hard limit (20,000 on the reference
# machine) and a tunnel costs the proxy two descriptors: the idle count stays below half of it.
IDLE_TUNNELS_MAX = 10_000

# The targets, checked in the summary: (scenario, metric, comparison, value, text).
TARGETS = [
    ("connect", "ratio", ">=", 0.75, ">= 0.75x direct"),
    ("connect", "cpu", "<=", 10.0, "<= 10 us CPU/request"),
    ("intercept", "ratio", ">=", 0.45, ">= 0.45x direct"),
    ("intercept", "cpu", "<=", 30.0, "<= 30 us CPU/request"),
    ("forward", "ratio", ">=", 0.5, ">= 0.5x direct"),
    ("forward", "cpu", "<=", 20.0, "<= 20 us CPU/request"),
    ("newconn", "ratio", ">=", 0.9, ">= 0.9x direct"),
    ("newconn-intercept", "ratio", ">=", 0.4, ">= 0.4x direct"),
    ("newconn-intercept", "cpu", "<=", 600.0, "<= 0.6 ms CPU/connection"),
    ("bulk", "ratio", ">=", 0.95, ">= 0.95x direct (and less CPU/MiB than Squid)"),
    ("bulk-intercept", "ratio", ">=", 0.7, ">= 0.7x direct"),
    ("connect", "rss", "<=", 30.0, "<= 30 MiB peak RSS at 32 connections"),
    ("sse", "added_p99", "<", 1000.0, "< 1 ms added p99 latency per event"),
]


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------------------------

class Processes:
    """Everything this run started, stopped by PID (never by name) in reverse order."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []  # (name, Popen)
        self.pid_file = workdir / "pids"

    def spawn(self, name, args, env=None, cwd=None):
        out = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen([str(a) for a in args], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.procs.append((name, proc))
        # bench/run's EXIT trap reads this if this script itself dies without cleaning up.
        with open(self.pid_file, "a") as f:
            f.write(f"{proc.pid}\n")
        return proc

    def alive(self, proc):
        return proc.poll() is None

    def stop(self, proc):
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def stop_all(self):
        for name, proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception as e:  # keep stopping the others
                log(f"stopping {name} (pid {proc.pid}): {e}")
        self.procs.clear()
        # All stopped: nothing for bench/run's trap to do (the PIDs may be reused from now on).
        self.pid_file.write_text("")


def descendants(pid):
    """pid and every process below it (Squid's kid and helpers), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def free_ports(count):
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_port(port, proc, name, timeout=START_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout} s")


def run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)


def tail(path, lines=15):
    try:
        return "\n".join(pathlib.Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- certificates ----------------------------------------------------------------------------

def make_ca(d, name, cn):
    key, cert = d / f"{name}-key.pem", d / f"{name}.pem"
    check(run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-out", key]))
    check(run(["openssl", "req", "-x509", "-new", "-key", key, "-sha256", "-days", "2",
               "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", cert]))
    return cert, key


def make_leaf(d, ca_cert, ca_key, names):
    key, csr, cert, ext = d / "leaf-key.pem", d / "leaf.csr", d / "leaf.pem", d / "leaf.ext"
    san = ",".join(f"IP:{n}" if n[0].isdigit() else f"DNS:{n}" for n in names)
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    check(run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-out", key]))
    check(run(["openssl", "req", "-new", "-key", key, "-subj", f"/CN={names[0]}", "-out", csr]))
    check(run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
               "-CAcreateserial", "-days", "2", "-sha256", "-extfile", ext, "-out", cert]))
    return cert, key


def check(result):
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(result.args)} failed: {result.stderr.strip()}")
    return result


# --- the setup -------------------------------------------------------------------------------

class Bench:
    def __init__(self, opts, workdir):
        self.o = opts
        self.w = workdir
        self.procs = Processes(workdir)
        self.bin = pathlib.Path(opts.build_dir).resolve()
        self.loadgen_bin = self.bin / "bench" / "sbx_loadgen"
        self.proxies = {}   # name -> dict(proc, pids(), cacert_tunnel, ...)
        self.skipped = {}   # name -> why
        self.results = []   # every loadgen JSON line, with scenario/proxy/round added

    # upstreams

    def start_upstreams(self):
        self.ca, self.ca_key = make_ca(self.w, "bench-ca", "sbx bench upstream CA")
        self.leaf, self.leaf_key = make_leaf(self.w, self.ca, self.ca_key,
                                             ["bench.test", "api.openai.com", "sse.test",
                                              "localhost", "127.0.0.1"])
        self.https_port, self.http_port, self.sse_port = free_ports(3)
        self.origin = "nginx"
        if shutil.which("nginx") or pathlib.Path("/usr/sbin/nginx").exists():
            try:
                self.start_nginx()
            except RuntimeError as e:
                log(f"nginx: {e}; serving JSON and 10 MiB from sbx_bench_upstream instead")
                self.origin = "sbx_bench_upstream"
        else:
            log("nginx is not installed; serving JSON and 10 MiB from sbx_bench_upstream instead")
            self.origin = "sbx_bench_upstream"
        if self.origin != "nginx":
            p = self.procs.spawn("origin", [self.bin / "bench" / "sbx_bench_upstream",
                                            "--tls", f"127.0.0.1:{self.https_port}",
                                            "--plain", f"127.0.0.1:{self.http_port}",
                                            "--cert", self.leaf, "--key", self.leaf_key])
            wait_port(self.https_port, p, "sbx_bench_upstream")
        p = self.procs.spawn("sse-upstream", [self.bin / "bench" / "sbx_bench_upstream",
                                              "--tls", f"127.0.0.1:{self.sse_port}",
                                              "--cert", self.leaf, "--key", self.leaf_key])
        wait_port(self.sse_port, p, "sbx_bench_upstream (sse)")

    def start_nginx(self):
        d = self.w / "nginx"
        (d / "tmp").mkdir(parents=True)
        www = d / "www"
        www.mkdir()
        with open(www / "10m.bin", "wb") as f:
            f.write(os.urandom(BULK_BYTES))
        # nginx's workers run as nobody: they must reach the static file.
        for p in (self.w, d, www):
            p.chmod(0o755)
        (www / "10m.bin").chmod(0o644)
        conf = d / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  default_type application/octet-stream;
  sendfile on;
  tcp_nodelay on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  ssl_protocols TLSv1.3;
  ssl_ecdh_curve X25519:prime256v1;
  ssl_certificate {self.leaf};
  ssl_certificate_key {self.leaf_key};
  server {{
    listen 127.0.0.1:{self.https_port} ssl;
    listen 127.0.0.1:{self.http_port};
    server_name _;
    location = /json {{ default_type application/json; return 200 '{JSON_BODY}'; }}
    location = /10m {{ alias {www}/10m.bin; }}
  }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        p = self.procs.spawn("nginx", [nginx, "-p", d, "-e", d / "error.log", "-c", conf])
        try:
            wait_port(self.https_port, p, "nginx")
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{tail(self.w / 'nginx.log')}\n{tail(d / 'error.log')}")

    # proxies

    def start_sbx(self):
        home = self.w / "sbx-home"
        sbx = self.bin / "cli" / "sbx"
        env = {**os.environ, "SBX_HOME": str(home), "SBX_KEYCHAIN": "file"}
        env.pop("SBX_CONFIG", None)
        check(run([sbx, "policy", "allow", "network", "bench.test,api.openai.com,sse.test"],
                  env=env))
        has_secret_cmd = run([sbx, "secret", "--help"], env=env).returncode == 0
        if has_secret_cmd:
            check(run([sbx, "secret", "set", "-g", "openai"], env=env, input=SECRET))
        else:
            secrets = home / "secrets.json"
            secrets.write_text(json.dumps({"version": 1, "secrets": [
                {"scope": "", "service": "openai", "value": SECRET}]}))
            secrets.chmod(0o600)
        port = free_ports(1)[0]
        config = {
            "listen": f"127.0.0.1:{port}",
            "resolve": {
                "bench.test:443": f"127.0.0.1:{self.https_port}",
                "bench.test:80": f"127.0.0.1:{self.http_port}",
                "api.openai.com:443": f"127.0.0.1:{self.https_port}",
                # The event stream comes from sbx_bench_upstream, on a port of its own.
                "api.openai.com:8444": f"127.0.0.1:{self.sse_port}",
                "sse.test:443": f"127.0.0.1:{self.sse_port}",
            },
            "upstream_ca_file": str(self.ca),
            # Every bench client is 127.0.0.1: the per-client cap must not be the limit measured.
            "limits": {"max_connections": 2 * IDLE_TUNNELS_MAX + 1000,
                       "max_connections_per_client": 2 * IDLE_TUNNELS_MAX + 999,
                       "max_connections_per_sandbox": 2 * IDLE_TUNNELS_MAX + 1000},
        }
        config_file = self.w / "sbx-config.json"
        config_file.write_text(json.dumps(config, indent=2))
        p = self.procs.spawn("sbx", [sbx, "proxy", "--config", config_file], env=env)
        wait_port(port, p, "sbx proxy")
        self.proxies["sbx"] = {
            "proc": p, "port": port, "note": "secret via " + (
                "`sbx secret set`" if has_secret_cmd else "secrets.json"),
            "tunnel_host": "bench.test:443", "forward_host": "bench.test:80",
            "intercept_host": "api.openai.com:443", "sse_host": "api.openai.com:8444",
            "intercept_ca": home / "ca.pem",
        }

    def start_squid(self):
        squid = shutil.which("squid") or "/usr/sbin/squid"
        if not pathlib.Path(squid).exists():
            self.skipped["squid"] = "not installed"
            return
        version = run([squid, "-v"]).stdout
        d = self.w / "squid"
        d.mkdir()
        plain_port, bump_port = free_ports(2)
        hosts = d / "hosts"
        hosts.write_text("127.0.0.1 localhost bench.test api.openai.com sse.test\n")
        bump = "--with-openssl" in version
        bump_conf = ""
        if bump:
            self.squid_ca, squid_ca_key = make_ca(d, "squid-ca", "squid bench bump CA")
            certgen = "/usr/lib/squid/security_file_certgen"
            check(run([certgen, "-c", "-s", d / "ssl_db", "-M", "16MB"]))
            bump_conf = f"""
http_port 127.0.0.1:{bump_port} ssl-bump name=bump tls-cert={self.squid_ca} tls-key={squid_ca_key} generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program {certgen} -s {d}/ssl_db -M 16MB
sslcrtd_children 4 startup=1 idle=1
acl bumped myportname bump
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={self.ca}
request_header_add Authorization "Bearer {SECRET}" bumped
"""
        conf = d / "squid.conf"
        conf.write_text(f"""
http_port 127.0.0.1:{plain_port}
{bump_conf}
http_access allow all
cache deny all
hosts_file {hosts}
access_log stdio:{d}/access.log
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
max_filedescriptors 20000
shutdown_lifetime 1 seconds
""")
        if os.geteuid() == 0:
            # Squid drops to the proxy user, which must write its logs and certificate database.
            run(["chown", "-R", "proxy:proxy", d])
            for p in (self.w,):
                p.chmod(0o755)
        p = self.procs.spawn("squid", [squid, "-N", "-f", conf])
        try:
            wait_port(plain_port, p, "squid")
        except RuntimeError as e:
            self.skipped["squid"] = f"{e}: {tail(d / 'cache.log', 5)}"
            self.procs.stop(p)
            return
        common = {"proc": p, "port": plain_port, "tunnel_host": f"bench.test:{self.https_port}",
                  "forward_host": f"bench.test:{self.http_port}"}
        self.proxies["squid"] = dict(common, note="access_log on, no cache")
        if bump:
            self.proxies["squid-bump"] = dict(
                proc=p, port=bump_port, intercept_host=f"api.openai.com:{self.https_port}",
                sse_host=f"api.openai.com:{self.sse_port}", intercept_ca=self.squid_ca,
                note="ssl-bump (peek, bump), EC CA, request_header_add")
        else:
            self.skipped["squid ssl-bump"] = "this squid is built without OpenSSL (install squid-openssl)"

    def start_tinyproxy(self):
        tinyproxy = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        if not pathlib.Path(tinyproxy).exists():
            self.skipped["tinyproxy"] = "not installed"
            return
        d = self.w / "tinyproxy"
        d.mkdir(mode=0o777)
        d.chmod(0o777)  # it drops to nobody and then writes its log here
        port = free_ports(1)[0]
        conf = d / "tinyproxy.conf"
        conf.write_text(f"""
User nobody
Group nogroup
Port {port}
Listen 127.0.0.1
Timeout 600
LogFile "{d}/tinyproxy.log"
LogLevel Warning
PidFile "{d}/tinyproxy.pid"
MaxClients 20000
""")
        p = self.procs.spawn("tinyproxy", [tinyproxy, "-d", "-c", conf])
        try:
            wait_port(port, p, "tinyproxy")
        except RuntimeError as e:
            self.skipped["tinyproxy"] = str(e)
            return
        self.proxies["tinyproxy"] = {"proc": p, "port": port, "note": "",
                                     "tunnel_host": f"127.0.0.1:{self.https_port}",
                                     "forward_host": f"127.0.0.1:{self.http_port}"}

    def start_mitmproxy(self):
        mitmdump = shutil.which("mitmdump")
        if not mitmdump:
            self.skipped["mitmproxy"] = "not installed (apt-get install mitmproxy)"
            return
        d = self.w / "mitmproxy"
        d.mkdir()
        # mitmproxy holds a whole response before passing it on unless told to stream it; an
        # event stream would never arrive. This is the usual addon that streams SSE.
        addon = d / "stream_sse.py"
        addon.write_text("def responseheaders(flow):\n"
                         "    if flow.response.headers.get('content-type', '').startswith("
                         "'text/event-stream'):\n"
                         "        flow.response.stream = True\n")
        common = ["--mode", "regular", "--listen-host", "127.0.0.1", "--set", f"confdir={d}",
                  "--set", f"ssl_verify_upstream_trusted_ca={self.ca}", "--set", "flow_detail=0",
                  "--set", "termlog_verbosity=warn"]
        # Two instances: one that tunnels every CONNECT untouched (ignore_hosts), one that
        # intercepts every CONNECT and adds the credential header.
        tunnel_port, mitm_port = free_ports(2)
        started = {}
        for name, port, extra in (
                ("mitmproxy", tunnel_port, ["--ignore-hosts", ".*"]),
                ("mitmproxy-mitm", mitm_port,
                 ["--modify-headers", f"/~q/Authorization/Bearer {SECRET}", "-s", addon])):
            p = self.procs.spawn(name, [mitmdump, "--listen-port", port, *common, *extra])
            try:
                wait_port(port, p, name, timeout=60)
            except RuntimeError as e:
                self.skipped[name] = f"{e}: {tail(self.w / f'{name}.log', 5)}"
                self.procs.stop(p)
                continue
            started[name] = (p, port)
        ca = d / "mitmproxy-ca-cert.pem"
        if "mitmproxy" in started:
            p, port = started["mitmproxy"]
            self.proxies["mitmproxy"] = {"proc": p, "port": port, "note": "ignore_hosts .*",
                                         "tunnel_host": f"127.0.0.1:{self.https_port}",
                                         "forward_host": f"127.0.0.1:{self.http_port}"}
        if "mitmproxy-mitm" in started and ca.exists():
            p, port = started["mitmproxy-mitm"]
            self.proxies["mitmproxy-mitm"] = {
                "proc": p, "port": port, "note": "modify_headers, SSE streamed by an addon, its own RSA CA",
                "intercept_host": f"127.0.0.1:{self.https_port}",
                "sse_host": f"127.0.0.1:{self.sse_port}", "intercept_ca": ca}

    # runs

    def pids(self, name):
        return descendants(self.proxies[name]["proc"].pid)

    def loadgen(self, sc, proxy, round_no, duration):
        """One run: proxy None = the direct baseline of scenario sc."""
        kind = sc["kind"]
        path = sc["path"]
        upstream_port = self.sse_port if kind == "sse" else (
            self.http_port if kind == "forward" else self.https_port)
        scheme = "http" if kind == "forward" else "https"
        args = [self.loadgen_bin, "--target", f"{scheme}://127.0.0.1:{upstream_port}{path}",
                "--connections", sc["connections"], "--threads", self.o.threads,
                "--duration", duration, "--warmup", self.o.warmup,
                "--label", f"{sc['key']}/{proxy or 'direct'}/r{round_no}"]
        if proxy is None:
            mode = "direct" if sc["mode"] in ("connect", "intercept", "forward") else sc["mode"]
            args += ["--mode", mode]
            if scheme == "https":
                args += ["--host", "bench.test", "--cacert", self.ca]
        else:
            px = self.proxies[proxy]
            args += ["--mode", sc["mode"], "--proxy", f"127.0.0.1:{px['port']}"]
            if kind == "forward":
                args += ["--host", px["forward_host"]]
            elif kind in ("intercept", "sse"):
                args += ["--host", px["sse_host" if kind == "sse" else "intercept_host"],
                         "--cacert", px["intercept_ca"]]
            else:
                args += ["--host", px["tunnel_host"], "--cacert", self.ca]
            for pid in self.pids(proxy):
                args += ["--sample-pid", pid]
        if sc["mode"] == "idle":
            args += ["--timeout", "10"]
        timeout = duration + self.o.warmup + 90
        result = run(args, timeout=timeout)
        line = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        try:
            data = json.loads(line)
        except ValueError:
            data = {"requests": 0, "errors": 1, "rps": 0, "mbps": 0,
                    "first_error": (result.stderr.strip() or "no output")[-300:]}
        data.update(scenario=sc["key"], proxy=proxy or "direct", round=round_no)
        if data.get("errors") and data.get("first_error"):
            log(f"  {data['scenario']}/{data['proxy']}: {data['errors']} errors, first: "
                f"{data['first_error']}")
        if proxy and not self.procs.alive(self.proxies[proxy]["proc"]):
            log(f"  {proxy} exited during {sc['key']}: {tail(self.w / (proxy + '.log'), 5)}")
        self.results.append(data)
        return data

    def scenarios(self):
        s = [
            dict(key="connect", title="CONNECT tunnel, keep-alive", mode="connect", kind="tunnel",
                 path="/json", connections=32),
            dict(key="intercept", title="intercepted + injected, keep-alive", mode="intercept",
                 kind="intercept", path="/json", connections=32),
            dict(key="forward", title="plain HTTP forward, keep-alive", mode="forward",
                 kind="forward", path="/json", connections=32),
            dict(key="newconn", title="new connection per request, tunnel", mode="newconn",
                 kind="tunnel", path="/json", connections=8),
            dict(key="newconn-intercept", title="new connection per request, intercepted",
                 mode="newconn", kind="intercept", path="/json", connections=8),
            dict(key="bulk", title="10 MiB bodies, tunnel", mode="bulk", kind="tunnel",
                 path="/10m", connections=4),
            dict(key="bulk-intercept", title="10 MiB bodies, intercepted", mode="bulk",
                 kind="intercept", path="/10m", connections=4),
            dict(key="sse", title="SSE, event every 10 ms, intercepted", mode="sse", kind="sse",
                 path="/sse", connections=32),
        ]
        if self.o.scenarios:
            wanted = set(self.o.scenarios.split(","))
            s = [x for x in s if x["key"] in wanted]
        return s

    def proxies_for(self, sc):
        needs = "intercept_host" if sc["kind"] in ("intercept", "sse") else (
            "forward_host" if sc["kind"] == "forward" else "tunnel_host")
        return [n for n, p in self.proxies.items() if needs in p]

    def run_all(self):
        scenarios = self.scenarios()
        for r in range(1, self.o.rounds + 1):
            log(f"round {r}/{self.o.rounds}")
            for sc in scenarios:
                names = self.proxies_for(sc)
                # Rotate the order every round so no proxy always runs first after a warm-up.
                shift = (r - 1) % max(1, len(names))
                names = names[shift:] + names[:shift]
                for name in names:
                    d = self.loadgen(sc, None, r, self.o.duration)
                    p = self.loadgen(sc, name, r, self.o.duration)
                    log(f"  {sc['key']:<18} direct {d.get('rps', 0):>9.0f}/s  {name:<15} "
                        f"{p.get('rps', 0):>9.0f}/s  p99 {p.get('p99_us', 0):>8.0f} us")
        if not self.o.scenarios or "idle" in self.o.scenarios.split(","):
            idle = dict(key="idle", title="idle tunnels", mode="idle", kind="tunnel",
                        path="/json", connections=self.o.idle)
            for name in self.proxies_for(idle):
                d = self.loadgen(idle, name, 1, self.o.idle_hold)
                log(f"  idle {name:<15} opened {d.get('opened', 0)} in "
                    f"{d.get('open_seconds', 0)} s, RSS {d.get('proxy_rss_kib', 0) / 1024:.1f} MiB")


# --- the report ------------------------------------------------------------------------------

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_num(v, digits=0, unit=""):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


def cpu_per_unit(sc_key, r):
    """Proxy CPU per request (us), per MiB for bulk, per connection for newconn."""
    cpu = r.get("proxy_cpu_us")
    if cpu is None:
        return None
    if sc_key.startswith("bulk"):
        return cpu / (r["bytes"] / 2**20) if r.get("bytes") else None
    return cpu / r["requests"] if r.get("requests") else None


def summarise(results, scenarios):
    """{scenario: {proxy: stats}} with medians over rounds and ratios to the paired direct run."""
    out = {}
    for sc in scenarios:
        key = sc["key"]
        by_proxy = {}
        directs_all = [r for r in results if r["scenario"] == key and r["proxy"] == "direct"]
        paired = {}  # id(proxy run) -> the direct run just before it, same scenario and round
        for i, r in enumerate(results):
            if r["scenario"] != key:
                continue
            by_proxy.setdefault(r["proxy"], []).append(r)
            before = results[i - 1] if i > 0 else None
            if (before and before["proxy"] == "direct" and before["scenario"] == key
                    and before["round"] == r["round"]):
                paired[id(r)] = before
        stats = {}
        for proxy, runs in by_proxy.items():
            if proxy == "direct":
                continue
            ratios, added = [], []
            directs = []
            for run_ in runs:
                d = paired.get(id(run_))
                if d is None:
                    continue
                directs.append(d)
                metric = "mbps" if key.startswith("bulk") else "rps"
                if d.get(metric):
                    ratios.append(run_.get(metric, 0) / d[metric])
                if key == "sse" and d.get("p99_us") is not None:
                    added.append(run_.get("p99_us", 0) - d["p99_us"])
            stats[proxy] = {
                "rps": med([r.get("rps") for r in runs]),
                "mbps": med([r.get("mbps") for r in runs]),
                "p50": med([r.get("p50_us") for r in runs]),
                "p99": med([r.get("p99_us") for r in runs]),
                "cpu": med([cpu_per_unit(key, r) for r in runs]),
                "rss": max([r.get("proxy_hwm_kib") or 0 for r in runs]) / 1024 or None,
                "ratio": med(ratios),
                "added_p99": med(added),
                "errors": sum(r.get("errors", 0) for r in runs),
                "reconnects": sum(r.get("reconnects", 0) for r in runs),
                "requests": sum(r.get("requests", 0) for r in runs),
                # The direct row shows every direct run of the scenario, not only this pairing.
                "direct_rps": med([d.get("rps") for d in directs_all]),
                "direct_mbps": med([d.get("mbps") for d in directs_all]),
                "direct_p50": med([d.get("p50_us") for d in directs_all]),
                "direct_p99": med([d.get("p99_us") for d in directs_all]),
                "rounds": len(runs),
            }
        out[key] = stats
    return out


def cpu_text(key, v):
    if v is None:
        return "–"
    if key.startswith("bulk"):
        return f"{v / 1000:.2f} ms/MiB"
    if key.startswith("newconn"):
        return f"{v / 1000:.2f} ms/conn"
    if key == "sse":
        return f"{v:.1f} µs/event"
    return f"{v:.1f} µs/req"


def render_table(summary, scenarios):
    lines = ["| scenario | proxy | req/s | MB/s | p50 µs | p99 µs | proxy CPU | peak RSS MiB | "
             "× direct | sbx ÷ peer | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for sc in scenarios:
        key = sc["key"]
        stats = summary.get(key, {})
        if not stats:
            continue
        first = next(iter(stats.values()))
        metric = "mbps" if key.startswith("bulk") else "rps"
        lines.append(f"| {sc['title']} | direct | {fmt_num(first['direct_rps'])} | "
                     f"{fmt_num(first['direct_mbps'], 1)} | {fmt_num(first['direct_p50'])} | "
                     f"{fmt_num(first['direct_p99'])} | – | – | 1.00 | | |")
        order = ["sbx"] + sorted(p for p in stats if p != "sbx")
        for proxy in order:
            if proxy not in stats:
                continue
            s = stats[proxy]
            vs = ""
            if proxy == "sbx":
                parts = []
                for peer in order[1:]:
                    peer_v, sbx_v = stats[peer].get(metric), s.get(metric)
                    if peer_v and sbx_v:
                        parts.append(f"{peer} {sbx_v / peer_v:.2f}×")
                vs = ", ".join(parts)
            ratio = s["ratio"]
            ratio_text = fmt_num(ratio, 2) + "×" if ratio is not None else "–"
            if key == "sse" and s["added_p99"] is not None:
                ratio_text += f" ({s['added_p99']:+.0f} µs p99)"
            lines.append(f"| | {proxy} | {fmt_num(s['rps'])} | {fmt_num(s['mbps'], 1)} | "
                         f"{fmt_num(s['p50'])} | {fmt_num(s['p99'])} | {cpu_text(key, s['cpu'])} | "
                         f"{fmt_num(s['rss'], 1)} | {ratio_text} | {vs} | {s['errors']}"
                         + (f" ({s['reconnects']:,} reconnects)" if s["reconnects"] else "") + " |")
    return "\n".join(lines)


def render_idle(results):
    rows = [r for r in results if r["scenario"] == "idle"]
    if not rows:
        return ""
    lines = ["| proxy | tunnels asked | open | open in s | RSS before MiB | RSS holding MiB | "
             "KiB per tunnel | errors |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        before = r.get("proxy_rss_before_open_kib")
        holding = r.get("proxy_rss_kib")
        per = ((holding - before) / r["opened"]) if (before is not None and holding is not None
                                                      and r.get("opened")) else None
        lines.append(f"| {r['proxy']} | {r.get('connections', '–')} | {r.get('opened', 0)} | "
                     f"{fmt_num(r.get('open_seconds'), 1)} | "
                     f"{fmt_num(before / 1024 if before else None, 1)} | "
                     f"{fmt_num(holding / 1024 if holding else None, 1)} | {fmt_num(per, 1)} | "
                     f"{r.get('errors', 0)} |")
    return "\n".join(lines)


def render_targets(summary, results):
    lines = ["| scenario | target | sbx measured | met |", "| --- | --- | ---: | :---: |"]
    for key, metric, cmp, value, text in TARGETS:
        s = summary.get(key, {}).get("sbx")
        if not s or s.get(metric) is None:
            continue
        v = s[metric]
        ok = v >= value if cmp == ">=" else (v <= value if cmp == "<=" else v < value)
        shown = {"ratio": f"{v:.2f}×", "cpu": cpu_text(key, v), "rss": f"{v:.1f} MiB",
                 "added_p99": f"{v:.0f} µs"}[metric]
        lines.append(f"| {key} | {text} | {shown} | {'yes' if ok else 'no'} |")
    idle = [r for r in results if r["scenario"] == "idle" and r["proxy"] == "sbx"]
    if idle and idle[0].get("opened"):
        r = idle[0]
        per = (r["proxy_rss_kib"] - r.get("proxy_rss_before_open_kib", 0)) / r["opened"]
        at_10k = (r.get("proxy_rss_before_open_kib", 0) + per * 10_000) / 1024
        lines.append(f"| idle | 10,000 idle tunnels in < 300 MiB | {at_10k:.0f} MiB "
                     f"({r['opened']} open: {r['proxy_rss_kib'] / 1024:.0f} MiB) | "
                     f"{'yes' if at_10k < 300 else 'no'} |")
    return "\n".join(lines)


def machine_text():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    commit = run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"]).stdout.strip() or "unknown"
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    load = open("/proc/loadavg").read().split()[:3]
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem_kib / 2**20,
            "kernel": platform.release(), "commit": commit + (" (with local changes)" if dirty else ""),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load": " ".join(load)}


def versions():
    out = {}
    for name, args in (("nginx", ["nginx", "-v"]), ("squid", ["squid", "-v"]),
                       ("tinyproxy", ["tinyproxy", "-v"]), ("mitmproxy", ["mitmdump", "--version"]),
                       ("openssl", ["openssl", "version"])):
        if shutil.which(args[0]) or pathlib.Path("/usr/sbin/" + args[0]).exists():
            r = run([shutil.which(args[0]) or "/usr/sbin/" + args[0], *args[1:]])
            text = (r.stdout + r.stderr).strip().splitlines()
            out[name] = text[0] if text else "?"
    return out


def report(bench, micro_text, started_at, load_before):
    scenarios = bench.scenarios()
    summary = summarise(bench.results, scenarios)
    m = machine_text()
    o = bench.o
    parts = [
        f"Measured {m['date']} on commit `{m['commit']}`: {m['nproc']} CPUs ({m['cpu']}), "
        f"{m['mem_gib']:.1f} GiB RAM, Linux {m['kernel']}; load average before the run "
        f"{load_before}, after {m['load']}.",
        f"Mode: {'quick' if o.quick else 'full'}; {o.rounds} round(s) of {o.duration} s per run "
        f"after {o.warmup} s warm-up, loadgen threads {o.threads}; origin {bench.origin} "
        f"(1 worker, TLS 1.3, ECDSA P-256) and sbx_bench_upstream for SSE; "
        f"took {time.monotonic() - started_at:.0f} s.",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in versions().items()) + ".",
        "",
        "Each proxy run follows a direct run of the same scenario (A B A B …, rounds in rotating "
        "order); × direct is the median over rounds of proxy ÷ its paired direct run (req/s, or "
        "MB/s for bulk); sbx ÷ peer compares the medians. Proxy CPU is utime+stime of the proxy "
        "(and its child processes) over the measured window only, per request, per MiB (bulk) or "
        "per connection (newconn); µs/req is also ms per 1,000 requests. Peak RSS is VmHWM over "
        "the window (reset through /proc/PID/clear_refs before it), so it includes what the proxy "
        "kept from earlier scenarios. Reconnects: keep-alive connections the proxy closed without "
        "saying so, after which the generator resends on a new connection (as curl does); they "
        "are not errors.",
        "",
        render_table(summary, scenarios),
    ]
    idle = render_idle(bench.results)
    if idle:
        parts += ["", f"Idle tunnels (one request each, then held {o.idle_hold} s; the open file "
                  "limit of this machine caps the count):", "", idle]
    targets = render_targets(summary, bench.results)
    parts += ["", "Targets of issue 4 (sbx):", "", targets]
    if bench.skipped:
        parts += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in bench.skipped.items())
                  + "."]
    notes = [f"{n}: {p['note']}" for n, p in bench.proxies.items() if p.get("note")]
    if notes:
        parts += ["", "Proxy settings: " + "; ".join(notes) + "."]
    if micro_text:
        parts += ["", "Micro-benchmarks (`sbx_micro`):", "", "```", micro_text.rstrip(), "```"]
    return "\n".join(parts)


def write_results(path, body):
    path = pathlib.Path(path)
    block = f"{RESULTS_BEGIN}\n{body}\n{RESULTS_END}"
    if path.exists():
        text = path.read_text()
        if RESULTS_BEGIN in text and RESULTS_END in text:
            head, rest = text.split(RESULTS_BEGIN, 1)
            _, tail_text = rest.split(RESULTS_END, 1)
            path.write_text(head + block + tail_text)
            return
    path.write_text("# Benchmark results\n\nWritten by `bench/run` (see bench/README.md); the "
                    "section between the markers is replaced on every full run, the notes "
                    "below it are kept. Every run's JSON line is in RESULTS.jsonl.\n\n" + block +
                    "\n\n## Notes\n\n(Performance changes and their before/after numbers go "
                    "here.)\n")


# --- main ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=str(ROOT / "build"))
    ap.add_argument("--quick", action="store_true", help="1 round, ~1 s runs, sbx + direct only")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=float, help="measured seconds per run")
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--threads", type=int, help="load generator threads")
    ap.add_argument("--idle", type=int, help="idle tunnels to hold")
    ap.add_argument("--idle-hold", type=float, help="seconds the idle tunnels are held")
    ap.add_argument("--proxies", help="comma list of sbx,squid,tinyproxy,mitmproxy")
    ap.add_argument("--scenarios", help="comma list, e.g. connect,intercept,idle")
    ap.add_argument("--output", help="results file (default bench/RESULTS.md; quick: none)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    o = ap.parse_args()
    nproc = os.cpu_count() or 1
    o.rounds = o.rounds or (1 if o.quick else 3)
    o.duration = o.duration or (0.5 if o.quick else 3.0)
    o.warmup = o.warmup if o.warmup is not None else (0.2 if o.quick else 0.5)
    o.idle_hold = o.idle_hold or (0.5 if o.quick else 3.0)
    # The generator, the proxy and the origin share the machine: the generator gets half of it.
    o.threads = o.threads or max(1, nproc // 2)
    o.idle = o.idle or (200 if o.quick else 9000)
    wanted = set((o.proxies or ("sbx" if o.quick else "sbx,squid,tinyproxy,mitmproxy")).split(","))
    output = o.output or (None if o.quick else str(ROOT / "bench" / "RESULTS.md"))

    started_at = time.monotonic()
    load_before = " ".join(open("/proc/loadavg").read().split()[:3])
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sbx-bench."))
    bench = Bench(o, workdir)
    if os.environ.get("SBX_BENCH_PID_FILE"):
        bench.procs.pid_file = pathlib.Path(os.environ["SBX_BENCH_PID_FILE"])

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    status = 0
    try:
        log(f"work directory {workdir}")
        bench.start_upstreams()
        bench.start_sbx()
        if "squid" in wanted:
            bench.start_squid()
        if "tinyproxy" in wanted:
            bench.start_tinyproxy()
        if "mitmproxy" in wanted:
            bench.start_mitmproxy()
        log("proxies: " + ", ".join(f"{n} :{p['port']}" for n, p in bench.proxies.items()))
        for name, why in bench.skipped.items():
            log(f"not measured: {name}: {why}")
        bench.run_all()
        micro = bench.bin / "bench" / "sbx_micro"
        micro_text = ""
        if micro.exists():
            r = run([micro, *(["--quick"] if o.quick else [])], timeout=300)
            micro_text = r.stdout + r.stderr
        body = report(bench, micro_text, started_at, load_before)
        print(body)
        if output:
            write_results(output, body)
            log(f"wrote {output}")
        raw = [workdir / "results.jsonl"]
        if output:
            raw.append(pathlib.Path(output).with_suffix(".jsonl"))
        for path in raw:
            with open(path, "w") as f:
                for r in bench.results:
                    f.write(json.dumps(r) + "\n")
        # The instrument must work, whatever the speed: sbx must have answered in every scenario.
        broken = [r for r in bench.results if r["proxy"] == "sbx" and r["scenario"] != "idle"
                  and not r.get("requests") and not r.get("bytes")]
        if broken:
            log("sbx answered no request in: " + ", ".join(r["scenario"] for r in broken))
            status = 1
    finally:
        bench.procs.stop_all()
        if o.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
