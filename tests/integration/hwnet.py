"""hwclient processes for integration tests, next to hwtest's Server.

    from hwnet import Net

    with Net() as net:                      # a headwater on a temp dir (hwtest.Server)
        key = net.authkey("a")              # namespace a (created) and a reusable key
        c1 = net.client("box1", key=key)    # `hwclient up` on its own temp state dir
        c1.wait_running()
        c1.wait_for(lambda st: ..., what="...")   # polls the daemon's status

Every client runs `hwclient up --login-server http://127.0.0.1:PORT --statedir DIR` with
its output in DIR/hwclient.log. Net's exit stops every client with `hwclient down` (so
ASan's leak check runs at its exit), checks the logs for sanitizer reports, then closes
the server; temp dirs are removed, processes killed if they do not stop. Waits poll the
daemon's control socket directly (a few ms per poll) and all have deadlines.
"""
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import hwtest
from hwtest import BUILD, SLOW, Server, check

HWCLIENT = os.path.join(BUILD, "hwclient")
AUTH_URL_RE = re.compile(r"To authenticate, visit:\n\n\t(\S+)\n")

_live = []


def _kill_all():
    for c in list(_live):
        c.kill()


atexit.register(_kill_all)


def run_hwclient(*args, ok=True, timeout=20, input=None):
    """hwclient ARGS as the CLI: (rc, stdout, stderr); ok as in hwtest.run_hwctl."""
    argv = [HWCLIENT] + [str(a) for a in args]
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout * SLOW, text=True)
    hwtest._check_sanitizer(p.stderr, "hwclient " + " ".join(argv[1:]))
    if ok is True and p.returncode != 0:
        raise AssertionError("hwclient %s: exit %d: %s" % (" ".join(argv[1:]), p.returncode,
                                                           p.stderr.strip()))
    if ok is False and p.returncode == 0:
        raise AssertionError("hwclient %s: succeeded but should have failed: %s"
                             % (" ".join(argv[1:]), p.stdout.strip()))
    return p.returncode, p.stdout, p.stderr


def local_call(sock_path, cmd, timeout=5):
    """One request on a daemon's control socket (the protocol of client/localapi.h)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout * SLOW)
    try:
        s.connect(sock_path)
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        chunks = []
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    return json.loads(b"".join(chunks))


def wait_until(fn, timeout, what, interval=0.005):
    """Polls fn() until it returns a true value (returned); fails after timeout s."""
    deadline = time.monotonic() + timeout * SLOW
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except (OSError, ValueError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %r)"
                                 % (timeout * SLOW, what, last))
        time.sleep(interval)


class Client:
    def __init__(self, server, hostname, key=None, extra=(), statedir=None, start=True,
                 login_server=None, env=None):
        self.server = server
        self.hostname = hostname
        self.key = key
        self.extra = list(extra)
        self.own_dir = statedir is None
        self.dir = statedir or tempfile.mkdtemp(prefix="hwc-")
        self.sock = os.path.join(self.dir, "hwclient.sock")
        self.log_path = os.path.join(self.dir, "hwclient.log")
        self.login_server = login_server or "http://127.0.0.1:%d" % server.port
        self.env = env
        self.proc = None
        self._log = None
        _live.append(self)
        if start:
            self.start()

    # -- process

    def argv(self):
        a = [HWCLIENT, "up", "--login-server", self.login_server, "--statedir", self.dir]
        if self.hostname:
            a += ["--hostname", self.hostname]
        if self.key:
            a += ["--authkey", self.key]
        if not any(x == "--tun" or str(x).startswith("--tun=") for x in self.extra):
            a += ["--tun", "none"]  # the default hw0 would touch the host's network
        return a + self.extra

    def start(self):
        check(self.proc is None, "client %s already running" % self.hostname)
        self._log = open(self.log_path, "a")
        self._log.write("=== %s\n" % " ".join(self.argv()))
        self._log.flush()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, preexec_fn=hwtest._die_with_parent,
                                     env=hwtest._hermetic_env(self.env))
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout=10):
        """Waits for the daemon to exit by itself; returns its status."""
        try:
            rc = self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            raise AssertionError("hwclient %s did not exit within %ss: %s"
                                 % (self.hostname, timeout * SLOW, self.log_tail()))
        self.proc = None
        self._close_log()
        self.check_log()
        return rc

    def down(self, timeout=10):
        """`hwclient down`, then waits for the daemon to exit (status 0 expected)."""
        if not self.running():
            return
        run_hwclient("down", "--statedir", self.dir)
        rc = self.wait_exit(timeout)
        if rc != 0:
            raise AssertionError("hwclient %s exited with %s after down: %s"
                                 % (self.hostname, rc, self.log_tail()))

    def terminate(self, timeout=10):
        if not self.running():
            return None
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None
        self._close_log()

    def close(self, check_log=True):
        try:
            if self.running():
                try:
                    if check_log:
                        self.down()
                    else:
                        self.proc.send_signal(signal.SIGTERM)
                        self.proc.wait(10 * SLOW)
                except Exception:
                    self.kill()
                    if check_log:
                        raise
            self.kill()
        finally:
            if self in _live:
                _live.remove(self)
            if self.own_dir and not os.environ.get("HW_KEEP_TMP"):
                shutil.rmtree(self.dir, ignore_errors=True)

    def _close_log(self):
        if self._log:
            self._log.close()
            self._log = None

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=15):
        lines = self.log_text().splitlines()[-n:]
        return "%s log: %s" % (self.hostname, " | ".join(lines) if lines else "(empty)")

    def check_log(self):
        hwtest._check_sanitizer(self.log_text(), "hwclient " + str(self.hostname))

    # -- asking the daemon

    def call(self, cmd):
        return local_call(self.sock, cmd)

    def status(self):
        return self.call("status")

    def cli(self, *args, ok=True):
        return run_hwclient(*args, "--statedir", self.dir, ok=ok)

    def cli_status_json(self):
        _, out, _ = self.cli("status", "--json")
        return json.loads(out)

    def cli_netmap(self):
        _, out, _ = self.cli("netmap", "-o", "json")
        return json.loads(out)

    def peers(self, st=None):
        """Peer statuses by HostName."""
        st = st or self.status()
        return {p["HostName"]: p for p in (st.get("Peer") or {}).values()}

    def wait_for(self, pred, timeout=10, what="a condition", interval=0.005):
        """Polls this daemon's status until pred(status) is true; returns the status."""
        def probe():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("hwclient %s exited with %s while waiting for %s: %s"
                                     % (self.hostname, self.proc.returncode, what,
                                        self.log_tail()))
            st = self.status()
            return st if pred(st) else None
        try:
            return wait_until(probe, timeout, "%s on %s" % (what, self.hostname), interval)
        except AssertionError as e:
            raise AssertionError("%s; %s" % (e, self.log_tail()))

    def wait_running(self, timeout=10):
        return self.wait_for(lambda st: st["BackendState"] == "Running", timeout, "Running")

    def wait_auth_url(self, timeout=10):
        def url():
            m = AUTH_URL_RE.search(self.log_text())
            return m.group(1) if m else None
        return wait_until(url, timeout, "an AuthURL from %s" % self.hostname)

    def node_id(self):
        return self.status()["Self"]["NodeID"]

    def ips(self):
        return self.status()["TailscaleIPs"]


class Net:
    """A Server plus clients, all stopped and removed on exit."""

    def __init__(self, config=None, server=None):
        self.server = server or Server(config=config)
        self.clients = []
        self.namespaces = set()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(check=exc_type is None)
        return False

    def close(self, check=True):
        errors = []
        for c in self.clients:
            try:
                c.close(check_log=check)
            except AssertionError as e:
                errors.append(str(e))
        self.server.close(check=check)
        if errors and check:
            raise AssertionError("; ".join(errors))

    def hwctl(self, *args, **kw):
        return self.server.hwctl(*args, **kw)

    def hwctl_json(self, *args, **kw):
        return self.server.hwctl_json(*args, **kw)

    def namespace(self, name):
        if name not in self.namespaces:
            self.server.hwctl("namespaces", "create", name)
            self.namespaces.add(name)
        return name

    def authkey(self, namespace, reusable=True, extra=()):
        """A pre-auth key of namespace (created when needed)."""
        self.namespace(namespace)
        args = ["preauthkeys", "create", "-n", namespace]
        if reusable:
            args.append("--reusable")
        k = self.server.hwctl_json(*args, *extra)
        return k["key"]

    def client(self, hostname, key=None, **kw):
        c = Client(self.server, hostname, key=key, **kw)
        self.clients.append(c)
        return c

    def nodes(self, namespace=None):
        args = ["nodes", "list"] + (["-n", namespace] if namespace else [])
        return {n["name"]: n for n in self.server.hwctl_json(*args)}

    def node_rows(self):
        """hwctl nodes list -o json, sorted by id, for before/after comparisons."""
        return sorted(self.server.hwctl_json("nodes", "list"), key=lambda n: n["id"])
