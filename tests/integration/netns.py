"""Network namespaces for integration tests and benches (standard library only; root).

    from netns import Netns

    with Netns() as nn:                       # names carry the pid: tests run side by side
        a, b = nn.ns("a"), nn.ns("b")         # created now, deleted at exit
        nn.veth(a, "10.1.0.1/24", b, "10.1.0.2/24")   # a veth pair joining them (up)
        nn.run(a, "ping", "-c1", "10.1.0.2")           # a command inside; CompletedProcess
        p = nn.popen(b, ["iperf3", "-s"])              # a process inside, killed at exit
        nn.route(a, "10.2.0.0/24", "10.1.0.2")
        nn.nat(b, "vethX")                             # MASQUERADE out of an interface

Namespace and interface names are short (interfaces have 15 characters at most) and
include the pid. Everything made is removed when the block ends, on failure too, and at
interpreter exit as a last resort: processes started with popen are killed first (a
namespace lives on while something runs in it), then the namespaces go, which takes their
veth ends with them. Nothing here touches the root namespace's interfaces except veth
ends explicitly placed there (ns None).
"""
import atexit
import os
import shutil
import signal
import subprocess
import time

_live = []


def available():
    """None when namespaces work here, else why not (for skip())."""
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("ip"):
        return "no ip command (iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


def _cleanup_all():
    for n in list(_live):
        n.close()


atexit.register(_cleanup_all)


class Netns:
    def __init__(self, tag=None):
        self.tag = tag or "%d" % (os.getpid() % 100000)
        self.namespaces = []
        self.procs = []
        self._n_links = 0
        _live.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- names

    def ns(self, name):
        """Creates namespace hw<pid><name> with lo up; returns its name."""
        full = "hw%s%s" % (self.tag, name)
        subprocess.run(["ip", "netns", "del", full], stderr=subprocess.DEVNULL)
        self._ip("netns", "add", full)
        self.namespaces.append(full)
        self.run(full, "ip", "link", "set", "lo", "up")
        return full

    def ifname(self, hint=""):
        """A fresh interface name (at most 15 characters)."""
        self._n_links += 1
        return ("h%s%s%d" % (self.tag, hint, self._n_links))[:15]

    # -- commands

    @staticmethod
    def wrap(ns, argv):
        argv = [str(a) for a in argv]
        return argv if ns is None else ["ip", "netns", "exec", ns] + argv

    def run(self, ns, *argv, check=True, timeout=30, input=None):
        p = subprocess.run(self.wrap(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError("%s: exit %d: %s" % (" ".join(self.wrap(ns, argv)), p.returncode,
                                                      (p.stderr or p.stdout).strip()[-500:]))
        return p

    def popen(self, ns, argv, **kw):
        """A process inside ns (stdin closed unless given); killed at close()."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self.wrap(ns, argv), **kw)
        self.procs.append(p)
        return p

    def _ip(self, *args):
        p = subprocess.run(["ip"] + [str(a) for a in args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=30)
        if p.returncode != 0:
            raise AssertionError("ip %s: %s" % (" ".join(map(str, args)), p.stderr.strip()))
        return p.stdout

    # -- topology

    def veth(self, ns_a, addr_a, ns_b, addr_b, mtu=None):
        """A veth pair, end a in ns_a with addr_a (CIDR, or None), end b likewise; both up.
        ns None = the root namespace. Returns (name_a, name_b)."""
        na, nb = self.ifname("a"), self.ifname("b")
        self._ip("link", "add", na, "type", "veth", "peer", "name", nb)
        for ns, name, addr in ((ns_a, na, addr_a), (ns_b, nb, addr_b)):
            if ns is not None:
                self._ip("link", "set", name, "netns", ns)
            if mtu:
                self.run(ns, "ip", "link", "set", name, "mtu", mtu)
            if addr:
                fam = "-6" if ":" in addr else "-4"
                self.run(ns, "ip", fam, "addr", "add", addr, "dev", name, *(["nodad"] if fam == "-6" else []))
            self.run(ns, "ip", "link", "set", name, "up")
        return na, nb

    def route(self, ns, prefix, via=None, dev=None):
        argv = ["ip", "route", "replace", prefix]
        if via:
            argv += ["via", via]
        if dev:
            argv += ["dev", dev]
        self.run(ns, *argv)

    def forwarding(self, ns, on=True):
        self.run(ns, "sysctl", "-qw", "net.ipv4.ip_forward=%d" % (1 if on else 0))

    def nat(self, ns, out_if):
        """ns forwards and masquerades what leaves through out_if."""
        self.forwarding(ns)
        self.run(ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", out_if, "-j", "MASQUERADE")

    def wait_for(self, fn, timeout, what, interval=0.05):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = fn()
                if last:
                    return last
            except (OSError, AssertionError, subprocess.SubprocessError) as e:
                last = e
            time.sleep(interval)
        raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (timeout, what, last))

    # -- cleanup

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                except OSError:
                    pass
        self.procs = []
        for ns in reversed(self.namespaces):
            # anything still running inside (children of those processes) goes too
            pids = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.namespaces = []
        if self in _live:
            _live.remove(self)
