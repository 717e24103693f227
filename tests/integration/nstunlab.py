"""A network namespace whose TUN device's far end is build/tools/nstun: the userspace
netstack (client/netstack.c) with the SOCKS5 and HTTP CONNECT proxies in front. The namespace
kernel's TCP stack plays the tailnet peer (100.64.0.2, fd7a:115c:a1e0::2) with a Python server
there: port 8080 sends a random 10 MB file and closes, 8081 echoes everything after the
client's FIN. Used by test_socks5.py and bench/socks5_bench.py. Names carry the pid; the
namespace is removed on exit even when a case fails."""
import atexit
import hashlib
import os
import socket
import struct
import subprocess
import sys
import tempfile

import hwtest
from hwtest import check, contains, eq, skip

NSTUN = os.path.join(hwtest.BUILD, "tools", "nstun")
ME4, PEER4 = "100.64.0.1", "100.64.0.2"
ME6, PEER6 = "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"
BLACKHOLE4 = "100.64.0.99"       # inside the tailnet prefix, nobody answers
OUTSIDE4 = "192.0.2.7"           # outside every prefix nstun is told about
FILE_PORT, ECHO_PORT, CLOSED_PORT = 8080, 8081, 8099
FILE_SIZE = 10 * 1024 * 1024
CONNECT_TIMEOUT_MS = 2000

# Runs inside the namespace: 8080 sends the file and closes, 8081 echoes until the client's
# FIN, then sends what it got back and closes (so half-close is exercised).
SERVER = r"""
import socket, sys, threading
path = sys.argv[1]
data = open(path, "rb").read()
def serve(s, kind):
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c, kind), daemon=True).start()
def handle(c, kind):
    try:
        if kind == "file":
            c.sendall(data)
        else:
            got = bytearray()
            while True:
                b = c.recv(65536)
                if not b:
                    break
                got += b
            c.sendall(b"echo:" + bytes(got))
    except OSError:
        pass
    finally:
        c.close()
for fam, addr in ((socket.AF_INET, sys.argv[2]), (socket.AF_INET6, sys.argv[3])):
    for port, kind in ((8080, "file"), (8081, "echo")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(64)
        threading.Thread(target=serve, args=(s, kind), daemon=True).start()
print("listening", flush=True)
sys.stdin.read()
"""

_namespaces = set()
_counter = [0]


def _ip(*args):
    subprocess.run(["ip"] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=10)


@atexit.register
def _remove_namespaces():
    for ns in list(_namespaces):
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        _namespaces.discard(ns)


class Lab:
    """A namespace with a TUN device whose far end is nstun's netstack, plus the server."""

    def __init__(self, extra=()):
        _counter[0] += 1
        self.ns = "hwsk%d_%d" % (os.getpid(), _counter[0])
        self.tun = "hwsk%d" % _counter[0]
        self.extra = list(extra)
        self.dir = tempfile.mkdtemp(prefix="hwsocks-")
        self.file = os.path.join(self.dir, "data.bin")
        self.nstun = self.server = None

    def __enter__(self):
        if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
            skip("needs root and /dev/net/tun")
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self):
        with open(self.file, "wb") as f:
            f.write(os.urandom(FILE_SIZE))
        with open(self.file, "rb") as f:
            self.sha = hashlib.sha256(f.read()).hexdigest()
        _ip("netns", "add", self.ns)
        _namespaces.add(self.ns)
        self.log = open(os.path.join(self.dir, "nstun.log"), "w+")
        self.nstun = subprocess.Popen(
            [NSTUN, "--netns", self.ns, "--tun", self.tun, "--addr4", ME4, "--addr6", ME6,
             "--socks5", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--connect-timeout-ms", str(CONNECT_TIMEOUT_MS * hwtest.SLOW),
             "--reachable", "100.64.0.0/10", "--reachable", "fd7a:115c:a1e0::/48",
             "--name", "box1=" + PEER4, "--name", "box1.example.com=" + PEER4,
             "--name", "box1.example.com=" + PEER6, "--name", "v6only=" + PEER6] + self.extra,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            preexec_fn=hwtest._die_with_parent)
        line = self.nstun.stdout.readline()
        check(line.startswith("ready "), "nstun did not start: %r %s" % (line, self._log()))
        ports = dict(kv.split("=") for kv in line.split()[1:])
        self.socks, self.http = int(ports["socks5"]), int(ports["http"])
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "link", "set", self.tun, "mtu", "1280", "up")
        _ip("-n", self.ns, "addr", "add", PEER4 + "/32", "peer", ME4 + "/32", "dev", self.tun)
        _ip("-n", self.ns, "-6", "addr", "add", PEER6 + "/128", "dev", self.tun, "nodad")
        _ip("-n", self.ns, "-6", "route", "add", ME6 + "/128", "dev", self.tun)
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", SERVER, self.file, PEER4,
             PEER6], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=hwtest._die_with_parent)
        eq(self.server.stdout.readline().strip(), "listening", "server in the namespace")

    def _log(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def __exit__(self, *exc):
        if self.server:
            self.server.stdin.close()
            try:
                self.server.wait(5)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        stats = None
        if self.nstun:
            self.nstun.stdin.close()
            try:
                out = self.nstun.stdout.read()
                rc = self.nstun.wait(20 * hwtest.SLOW)
            except subprocess.TimeoutExpired:
                self.nstun.kill()
                self.nstun.wait()
                out, rc = "", "hung on shutdown"
            stats = out
            self.stats = out.strip()
        subprocess.run(["ip", "netns", "del", self.ns], stderr=subprocess.DEVNULL)
        _namespaces.discard(self.ns)
        if self.nstun and exc[0] is None:
            hwtest._check_sanitizer(self._log(), "nstun")
            eq(rc, 0, "nstun exit status (clean shutdown); log: %s" % self._log()[-800:])
            contains(stats, "stats in=", "nstun output")
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)
        return False

    # -- clients --

    def socks_connect(self, atyp, addr, port, cmd=1):
        """Greeting + request; returns (socket, reply code)."""
        s = socket.create_connection(("127.0.0.1", self.socks), timeout=30 * hwtest.SLOW)
        s.sendall(b"\x05\x01\x00")
        eq(recv_exact(s, 2), b"\x05\x00", "method selection")
        if atyp == 1:
            a = socket.inet_pton(socket.AF_INET, addr)
        elif atyp == 4:
            a = socket.inet_pton(socket.AF_INET6, addr)
        else:
            a = bytes([len(addr)]) + addr.encode()
        s.sendall(bytes([5, cmd, 0, atyp]) + a + struct.pack(">H", port))
        rep = recv_exact(s, 10)
        eq(rep[0], 5, "reply version")
        return s, rep[1]

    def http_connect(self, target):
        s = socket.create_connection(("127.0.0.1", self.http), timeout=30 * hwtest.SLOW)
        s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1)
            if not b:
                break
            head += b
        return s, head.decode(errors="replace")


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            raise AssertionError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += b
    return buf


def recv_all_sha(s):
    h, total = hashlib.sha256(), 0
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        h.update(b)
        total += len(b)
    return h.hexdigest(), total
