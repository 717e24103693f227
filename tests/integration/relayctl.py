"""Starting and stopping hwrelay for integration tests (stdlib only).

Every relay listens on 127.0.0.1 with free ports and a key file in a temporary
directory; stop() sends SIGTERM and reports a non-zero exit or sanitizer output as a
failure, so leaks and crashes surface in the test that caused them.
"""
import os
import socket
import subprocess
import tempfile
import time

BUILD = os.environ.get("HW_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
FIXTURES = os.environ.get("HW_FIXTURES", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures"))
HWRELAY = os.path.join(BUILD, "hwrelay")
# ASan keeps freed memory in quarantine, so RSS bounds only mean something without it.
SANITIZED = bool(os.environ.get("HW_SANITIZED")) or "asan" in os.path.basename(os.path.normpath(BUILD))
DERP_PAIR = os.path.join(BUILD, "bench", "derp_pair")


def free_port(kind=socket.SOCK_STREAM):
    """A port free for both TCP and UDP on 127.0.0.1 (the relay binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class Relay:
    def __init__(self, *extra, certmode="http", key_json=None, workdir=None, stun=True, env=None, port=None,
                 stun_port=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="hwrelay-test-")
        self.port = port or free_port()
        self.stun_port = stun_port or free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.key_path = os.path.join(self.dir, "hwrelay.key")
        if key_json is not None:
            with open(self.key_path, "w") as f:
                f.write(key_json)
            os.chmod(self.key_path, 0o600)
        args = [HWRELAY, "-a", self.addr, "-certmode=%s" % certmode, "-c", self.key_path,
                "-stun-port", str(self.stun_port), "-http-port", "-1", "-certdir", os.path.join(self.dir, "certs")]
        if not stun:
            args.append("-stun=false")
        args += list(extra)
        self.log_path = os.path.join(self.dir, "hwrelay.log")
        self.out_path = os.path.join(self.dir, "hwrelay.out")
        self.log = open(self.log_path, "wb")
        self.out = open(self.out_path, "wb")
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=self.log, env=e)
        self.wait_listening()

    def wait_listening(self, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("hwrelay exited with %s:\n%s" % (self.proc.returncode, self.log_text()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("hwrelay did not listen:\n" + self.log_text())

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stdout_text(self):
        if not self.out.closed:
            self.out.flush()
        with open(self.out_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, text, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log_text():
                return True
            time.sleep(0.1)
        return False

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        """SIGTERM; returns None when the exit was clean, else the reason."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "did not stop on SIGTERM"
        self.log.close()
        self.out.close()
        text = self.log_text()
        if "Sanitizer" in text or "runtime error:" in text:
            return "sanitizer report:\n" + text[-3000:]
        if self.proc.returncode != 0:
            return "exit status %s:\n%s" % (self.proc.returncode, text[-2000:])
        return None


def derp_pair(mode, *args, timeout=120):
    """Runs bench/derp_pair; returns (ok, output)."""
    p = subprocess.run([DERP_PAIR, mode] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    out = p.stdout.decode(errors="replace")
    return p.returncode == 0 and out.rstrip().endswith("ok"), out


def http_get(port, path, method="GET", headers=None, timeout=5):
    """One raw HTTP/1.1 request; returns (status, headers dict lowercased, body bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    req = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, path)
    for k, v in (headers or {}).items():
        req += "%s: %s\r\n" % (k, v)
    req += "\r\n"
    s.sendall(req.encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


class Cases:
    """Prints one ok/FAIL/skip line per case, as tests/run.py expects."""

    def __init__(self):
        self.failed = 0

    def run(self, name, fn):
        try:
            res = fn()
            if isinstance(res, str) and res.startswith("skip"):
                print("skip %s: %s" % (name, res[5:]))
            else:
                print("ok %s" % name)
        except Exception as e:  # a failing case must not stop the others
            self.failed += 1
            msg = str(e).replace("\n", " | ")
            print("FAIL %s: %s" % (name, msg[:1500]))
        import sys
        sys.stdout.flush()
