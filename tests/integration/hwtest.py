"""Harness for the integration tests (standard library only).

A test file registers its cases with @case and ends with `hwtest.main()`; each case
prints one line that tests/run.py counts: "ok NAME", "FAIL NAME: why" or "skip NAME: why"
(the traceback goes to stderr). Cases run in file order; `python3 test_x.py NAME...` runs
only those.

    from hwtest import case, main, Server, eq, check

    @case
    def namespaces_create():
        with Server() as s:
            s.hwctl("namespaces", "create", "default")
            eq([n["name"] for n in s.hwctl_json("namespaces", "list")], ["default"])

    main()

Server() makes a temp dir with a config (free 127.0.0.1 port, unix socket, SQLite file,
noise key, no DERP), starts `$HW_BUILD/headwater serve -c CONFIG` with its output in a log
file and waits until the admin socket answers. Processes and temp dirs are cleaned up
always (atexit; a server also dies with the test process). Nothing talks to anything but
127.0.0.1 and the unix socket. HW_SANITIZED (or a build-asan build) stretches timeouts.
"""
import atexit
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(os.environ.get("HW_BUILD") or os.path.join(ROOT, "build"))
SANITIZED = bool(os.environ.get("HW_SANITIZED")) or "asan" in os.path.basename(BUILD)
SLOW = 4 if SANITIZED else 1
HEADWATER = os.path.join(BUILD, "headwater")
HWCTL = os.path.join(BUILD, "hwctl")

# Lines in a server log that mean a sanitizer found a bug.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "ERROR: ThreadSanitizer", "WARNING: ThreadSanitizer")


# ---------------------------------------------------------------- cases and checks

class Skip(Exception):
    """Raised by skip(): the case cannot run here (not a failure)."""


_cases = []


def case(fn=None, *, name=None):
    """Registers a test case (usable as @case or @case(name="..."))."""
    def register(f):
        _cases.append((name or f.__name__, f))
        return f
    return register(fn) if fn is not None else register


def skip(why):
    raise Skip(why)


def check(cond, msg="check failed"):
    if not cond:
        raise AssertionError(msg)


def eq(got, want, what="value"):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def contains(text, part, what="output"):
    if part not in text:
        raise AssertionError("%s does not contain %r: %r" % (what, part, text))


def main():
    only = set(sys.argv[1:])
    failed = 0
    for name, fn in _cases:
        if only and name not in only:
            continue
        start = time.monotonic()
        try:
            fn()
        except Skip as e:
            print("skip %s: %s" % (name, e), flush=True)
            continue
        except Exception as e:  # every failure is reported, the next case still runs
            failed += 1
            why = (str(e) or type(e).__name__).replace("\n", " | ")
            if len(why) > 600:
                why = why[:600] + "..."
            print("FAIL %s: %s" % (name, why), flush=True)
            sys.stderr.write("--- %s ---\n%s" % (name, traceback.format_exc()))
            sys.stderr.flush()
            continue
        finally:
            _cleanup_servers()
        print("ok %s" % name, flush=True)
        if os.environ.get("HW_TEST_TIMES"):
            sys.stderr.write("%s: %.2fs\n" % (name, time.monotonic() - start))
    sys.exit(1 if failed else 0)


# ---------------------------------------------------------------- processes

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    # The server must not outlive a test process killed by the runner's timeout.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _hermetic_env(env=None):
    """os.environ without the variables hwctl reads, plus env."""
    e = dict(os.environ)
    for k in ("HEADWATER_SOCKET", "HEADWATER_CONFIG"):
        e.pop(k, None)
    if env:
        for k, v in env.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
    return e


def run_hwctl(*args, ok=True, env=None, cwd=None, input=None, timeout=30):
    """Runs $HW_BUILD/hwctl ARGS (no --socket added) and returns (rc, stdout, stderr).
    ok=True: rc must be 0; ok=False: rc must not be 0; ok=None: no check. env adds to (or,
    with None values, removes from) the environment, from which HEADWATER_SOCKET and
    HEADWATER_CONFIG are removed unless given. cwd defaults to a scratch dir so that
    ./data/headwater.sock of a `make run` is never found by accident."""
    argv = [HWCTL] + [str(a) for a in args]
    if cwd is None:
        cwd = _scratch_dir()
    p = subprocess.run(argv, cwd=cwd, env=_hermetic_env(env), input=input,
                       stdin=None if input is not None else subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout * SLOW, text=True)
    rc, out, err = p.returncode, p.stdout, p.stderr
    _check_sanitizer(err, "hwctl " + " ".join(argv[1:]))
    if ok is True and rc != 0:
        raise AssertionError("hwctl %s: exit %d: %s" % (" ".join(argv[1:]), rc, err.strip()))
    if ok is False and rc == 0:
        raise AssertionError("hwctl %s: succeeded but should have failed; stdout: %s"
                             % (" ".join(argv[1:]), out.strip()))
    return rc, out, err


def _check_sanitizer(text, who):
    for mark in SANITIZER_MARKS:
        if mark in text:
            lines = [l for l in text.splitlines() if l.strip()]
            raise AssertionError("%s: sanitizer report: %s" % (who, " | ".join(lines[:12])))


_scratch = None


def _scratch_dir():
    global _scratch
    if _scratch is None:
        _scratch = tempfile.mkdtemp(prefix="hwt-")
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def api_call(sock_path, method, path, body=None, timeout=10):
    """One request to the admin API: returns (status, decoded JSON or raw text)."""
    conn = _UnixHTTPConnection(sock_path, timeout * SLOW)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read().decode(errors="replace")
        try:
            return resp.status, json.loads(raw) if raw else {}
        except ValueError:
            return resp.status, raw
    finally:
        conn.close()


_servers = []
_servers_lock = threading.Lock()


def _cleanup_servers():
    """Stops whatever a case left running (its own failure was already reported)."""
    with _servers_lock:
        servers = list(_servers)
    for s in servers:
        try:
            s.close(check=False)
        except Exception as e:
            sys.stderr.write("cleanup of %s: %s\n" % (s.dir, e))


atexit.register(_cleanup_servers)


class Server:
    """A headwater process on a temp dir. Use as a context manager, or call close()."""

    def __init__(self, start=True, config=None, wrap=()):
        # wrap: a command prefix, e.g. ["ip", "netns", "exec", NS] to run inside a namespace
        # (the admin socket is a file, so the harness reaches it from anywhere)
        self.wrap = list(wrap)
        self.dir = tempfile.mkdtemp(prefix="hw-")  # short: a socket path has < 108 bytes
        self.socket = os.path.join(self.dir, "hw.sock")
        self.db_path = os.path.join(self.dir, "db.sqlite")
        self.config_path = os.path.join(self.dir, "config.yaml")
        self.log_path = os.path.join(self.dir, "headwater.log")
        self.port = free_port()
        self.proc = None
        self._log = None
        self._closed = False
        self.settings = self.default_config()
        _merge(self.settings, config or {})
        self.write_config()
        with _servers_lock:
            _servers.append(self)
        if start:
            self.start()

    def default_config(self):
        return {
            "server_url": "http://127.0.0.1:%d" % self.port,
            "listen_addr": "127.0.0.1:%d" % self.port,
            "metrics_listen_addr": "127.0.0.1:%d" % free_port(),
            "noise": {"private_key_path": os.path.join(self.dir, "noise_private.key")},
            "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48",
                         "allocation": "sequential"},
            "database": {"type": "sqlite", "sqlite": {"path": self.db_path,
                                                      "write_ahead_log": True}},
            "derp": {"server": {"enabled": False}, "urls": [], "paths": [],
                     "auto_update_enabled": False},
            "unix_socket": self.socket,
            "unix_socket_permission": "0770",
            "log": {"level": "info"},
        }

    def write_config(self):
        # JSON is YAML (flow style): no YAML writer needed, and libyaml reads it.
        with open(self.config_path, "w") as f:
            json.dump(self.settings, f, indent=2)
            f.write("\n")

    # -- lifecycle

    def start(self, timeout=10):
        check(self.proc is None, "server already running")
        self._log = open(self.log_path, "a")
        self._log.write("=== headwater serve -c %s\n" % self.config_path)
        self._log.flush()
        self.proc = subprocess.Popen(self.wrap + [HEADWATER, "serve", "-c", self.config_path],
                                     cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log,
                                     preexec_fn=_die_with_parent, env=_hermetic_env())
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=10):
        deadline = time.monotonic() + timeout * SLOW
        last = "no answer yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                self._close_log()
                raise AssertionError("headwater exited with %s while starting: %s"
                                     % (rc, self.log_tail()))
            if os.path.exists(self.socket):
                try:
                    status, body = api_call(self.socket, "GET", "/api/v1/health", timeout=2)
                    if status == 200:
                        return
                    last = "health answered %s: %s" % (status, body)
                except OSError as e:
                    last = str(e)
            time.sleep(0.05)
        raise AssertionError("headwater did not answer on %s within %ss (%s): %s"
                             % (self.socket, timeout * SLOW, last, self.log_tail()))

    def stop(self, timeout=10, check_log=True):
        """SIGTERM, then SIGKILL after timeout. Returns the exit status. Raises when the
        log shows a sanitizer report (with check_log)."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            self.proc = None
            self._close_log()
            raise AssertionError("headwater ignored SIGTERM for %ss: killed: %s"
                                 % (timeout * SLOW, self.log_tail()))
        self.proc = None
        self._close_log()
        if check_log:
            self.check_log()
        return rc

    def kill9(self):
        """SIGKILL: a crash as far as the store is concerned."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self._close_log()

    def restart(self, timeout=10):
        self.stop()
        return self.start(timeout)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def close(self, check=True):
        if self._closed:
            return
        self._closed = True
        try:
            if self.proc is not None:
                try:
                    self.stop(check_log=check)
                finally:
                    self.kill9()
        finally:
            with _servers_lock:
                if self in _servers:
                    _servers.remove(self)
            if os.environ.get("HW_KEEP_TMP"):
                sys.stderr.write("kept %s\n" % self.dir)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(check=exc_type is None)
        return False

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

    def log_tail(self, n=25):
        lines = self.log_text().splitlines()[-n:]
        return "log tail: " + (" | ".join(lines) if lines else "(empty)")

    def check_log(self):
        _check_sanitizer(self.log_text(), "headwater")

    # -- talking to it

    def api(self, method, path, body=None):
        return api_call(self.socket, method, path, body)

    def hwctl(self, *args, ok=True, env=None, cwd=None, input=None, timeout=30):
        """hwctl --socket SOCKET ARGS: returns (rc, stdout, stderr); see run_hwctl."""
        try:
            return run_hwctl("--socket", self.socket, *args, ok=ok, env=env, cwd=cwd,
                             input=input, timeout=timeout)
        except AssertionError as e:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("%s (headwater died: %s)" % (e, self.log_tail()))
            raise

    def hwctl_json(self, *args, **kw):
        """hwctl -o json ARGS, decoded."""
        _, out, _ = self.hwctl("-o", "json", *args, **kw)
        try:
            return json.loads(out)
        except ValueError as e:
            raise AssertionError("hwctl -o json %s printed invalid JSON (%s): %r"
                                 % (" ".join(map(str, args)), e, out))

    def hwctl_err(self, *args, **kw):
        """Runs hwctl expecting failure; returns (rc, the single stderr line)."""
        rc, out, err = self.hwctl(*args, ok=False, **kw)
        lines = err.splitlines()
        eq(len(lines), 1, "stderr lines of hwctl %s (%r)" % (" ".join(map(str, args)), err))
        return rc, lines[0]

    # -- the store, directly (for what only the control protocol creates)

    def sqlite(self, sql, params=()):
        """Runs one statement on the server's database; returns the rows."""
        return sqlite(self.db_path, sql, params)

    def columns(self, table):
        return [r[1] for r in self.sqlite("PRAGMA table_info(%s)" % table)]

    def add_pending(self, reg_id, hostname="laptop", expires_in=3600, node_key=None):
        """A pending registration as an interactive login leaves it, waiting for
        `hwctl nodes register --key REG_ID`. node_key ("nodekey:<hex>") is the test's own
        when it must act as that node (DERP); else a random one. Returns the keys used."""
        now = int(time.time())
        h = os.urandom(32).hex()
        keys = {
            "machine_key": "mkey:" + h,
            "node_key": node_key or "nodekey:" + os.urandom(32).hex(),
            "disco_key": "discokey:" + os.urandom(32).hex(),
        }
        hostinfo = json.dumps({"Hostname": hostname, "OS": "linux"})
        values = {
            "id": reg_id, "registration_id": reg_id, "reg_id": reg_id,
            "hostname": hostname, "hostinfo": hostinfo, "hostinfo_json": hostinfo,
            "created_at": now, "expires_at": now + expires_in, "expiry": now + expires_in,
        }
        values.update(keys)
        _insert(self.db_path, "pending_registrations", values)
        return keys

    def add_routes(self, node_id, prefixes):
        """Marks prefixes as advertised by the node, as its Hostinfo.RoutableIPs would."""
        now = int(time.time())
        for p in prefixes:
            _insert(self.db_path, "routes", {
                "node_id": node_id, "prefix": p, "advertised": 1, "enabled": 0,
                "is_primary": 0, "created_at": now, "updated_at": now,
            })

    def register_node(self, namespace, hostname="laptop", reg_id=None, node_key=None):
        """A pending row plus `hwctl nodes register`: returns the node (API JSON)."""
        reg_id = reg_id or "reg-" + os.urandom(8).hex()
        self.add_pending(reg_id, hostname, node_key=node_key)
        return self.hwctl_json("nodes", "register", "-n", namespace, "--key", reg_id)


def sqlite(path, sql, params=()):
    """One statement on a SQLite file (committed); returns the rows."""
    conn = sqlite3.connect(path, timeout=10 * SLOW)
    try:
        cur = conn.execute(sql, params)
        rows = cur.fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def _insert(db_path, table, candidates):
    """INSERT into table the candidate values whose names are columns of it; a NOT NULL
    column without default that no candidate fills is an error naming it."""
    info = sqlite(db_path, "PRAGMA table_info(%s)" % table)
    if not info:
        raise AssertionError("the database has no table %s" % table)
    cols, vals = [], []
    for _, name, _type, notnull, default, pk in info:
        if name in candidates:
            cols.append(name)
            vals.append(candidates[name])
        elif notnull and default is None and not pk:
            raise AssertionError("cannot fill %s.%s: the harness does not know this column"
                                 % (table, name))
    sqlite(db_path, "INSERT INTO %s (%s) VALUES (%s)"
           % (table, ", ".join(cols), ", ".join("?" * len(cols))), vals)


def _merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        elif v is None:
            base.pop(k, None)
        else:
            base[k] = v
