#!/usr/bin/env python3
"""Direct paths through NAT (issue 5's namespace test): disco alone (`hwclient ping`),
and real packets over each node's TUN device and WireGuard.

Five network namespaces made here and removed at the end, whatever happens:

    A (10.1.0.2) -- rA [MASQUERADE] 198.51.100.2 -- inet -- 203.0.113.2 [MASQUERADE] rB -- B (10.2.0.2)
                                                    |
                                         headwater on 198.18.0.1 (lo):
                                         control, built-in relay, STUN

Each hwclient learns its NAT's public address by STUN and sends it as its endpoint;
the two sides reach each other only through the "internet" namespace. With UDP between
the two NAT addresses dropped there (STUN to the server still works), `hwclient ping`
answers through DERP; once the rule goes, the next pings, helped by CallMeMaybe through
DERP, open both NATs and the path is direct within 5 s. Dropping UDP again makes the
path die and traffic return to DERP after the 6.5 s trust window.

Needs root, `ip netns` and iptables; skipped otherwise. Names carry the pid."""
import os
import re
import shutil
import subprocess
import time

import hwtest
from hwnet import Client, wait_until
from hwtest import SLOW, Server, case, check, contains, eq, free_port, main, skip

PONG_RE = re.compile(r"^pong from (\S+) \((\S+)\) via (\S+) in (\S+)$", re.M)
PID = os.getpid()
SERVER_IP = "198.18.0.1"
WAN_A, WAN_B = "198.51.100.2", "203.0.113.2"


def sh(*argv, ok=True):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=20)
    if ok and p.returncode != 0:
        raise AssertionError("%s: exit %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p


class Topology:
    """The five namespaces; close() removes them (and so their links and rules)."""

    def __init__(self):
        self.ns = {k: "hwd%s%d" % (k, PID) for k in ("a", "ra", "inet", "rb", "b")}
        self.made = []
        try:
            self._build()
        except Exception:
            self.close()
            raise

    def run(self, ns, *argv, ok=True):
        return sh("ip", "netns", "exec", self.ns[ns], *argv, ok=ok)

    def _link(self, n1, if1, addr1, n2, if2, addr2):
        sh("ip", "link", "add", if1, "netns", self.ns[n1], "type", "veth", "peer", "name", if2,
           "netns", self.ns[n2])
        self.run(n1, "ip", "addr", "add", addr1, "dev", if1)
        self.run(n2, "ip", "addr", "add", addr2, "dev", if2)
        self.run(n1, "ip", "link", "set", if1, "up")
        self.run(n2, "ip", "link", "set", if2, "up")

    def _build(self):
        for k, name in self.ns.items():
            sh("ip", "netns", "add", name)
            self.made.append(name)
            self.run(k, "ip", "link", "set", "lo", "up")
        p = "%d" % PID
        self._link("a", "va" + p, "10.1.0.2/24", "ra", "vra" + p, "10.1.0.1/24")
        self._link("ra", "wa" + p, WAN_A + "/24", "inet", "wia" + p, "198.51.100.1/24")
        self._link("b", "vb" + p, "10.2.0.2/24", "rb", "vrb" + p, "10.2.0.1/24")
        self._link("rb", "wb" + p, WAN_B + "/24", "inet", "wib" + p, "203.0.113.1/24")
        self.run("inet", "ip", "addr", "add", SERVER_IP + "/32", "dev", "lo")
        self.run("a", "ip", "route", "add", "default", "via", "10.1.0.1")
        self.run("b", "ip", "route", "add", "default", "via", "10.2.0.1")
        self.run("ra", "ip", "route", "add", "default", "via", "198.51.100.1")
        self.run("rb", "ip", "route", "add", "default", "via", "203.0.113.1")
        for r, wan in (("ra", "wa" + p), ("rb", "wb" + p)):
            self.run(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.run(r, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE")
        self.run("inet", "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def udp_rules(self, op):
        """op -A / -D: the internet drops UDP between the two NAT addresses."""
        for src, dst in ((WAN_A, WAN_B), (WAN_B, WAN_A)):
            self.run("inet", "iptables", op, "FORWARD", "-p", "udp", "-s", src, "-d", dst, "-j", "DROP")

    def close(self):
        for name in reversed(self.made):
            sh("ip", "netns", "del", name, ok=False)
        self.made = []


class NsServer(Server):
    def __init__(self, topo, **kw):
        self.topo = topo
        super().__init__(start=False, **kw)

    def start(self, timeout=10):
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.topo.ns["inet"], hwtest.HEADWATER, "serve",
                                      "-c", self.config_path], cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log, preexec_fn=hwtest._die_with_parent,
                                     env=hwtest._hermetic_env())
        self.wait_ready(timeout)
        return self


class NsClient(Client):
    def __init__(self, ns, *a, **kw):
        self.ns = ns
        super().__init__(*a, **kw)

    def argv(self):
        return ["ip", "netns", "exec", self.ns] + super().argv()


def can_run():
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "iptables"):
        if not shutil.which(tool):
            return "%s is not installed" % tool
    return None


def peer_entry(c, name):
    for k, v in c.status()["Peer"].items():
        if v["HostName"] == name:
            return k, v
    return None, None


def netmap_peer(c, name):
    for p in c.cli_netmap().get("Peers") or []:
        if (p.get("Hostinfo") or {}).get("Hostname") == name:
            return p
    return None


def pongs(c, peer, count):
    rc, out, err = c.cli("ping", peer, "-c", str(count), ok=None)
    return PONG_RE.findall(out), out + err


def start_pair(topo, server, clients, extra=()):
    """headwater in "inet", hwclients a and b behind their NATs with UDP between the NATs
    dropped; returns (server, a, b) once each knows the other's NAT endpoint."""
    port = free_port()
    stun = free_port()
    server = NsServer(topo, config={
        "server_url": "http://%s:%d" % (SERVER_IP, port), "listen_addr": "%s:%d" % (SERVER_IP, port),
        "derp": {"server": {"enabled": True, "region_id": 999, "region_code": "hw", "region_name": "Headwater",
                            "stun_listen_addr": "%s:%d" % (SERVER_IP, stun),
                            "private_key_path": "derp_server_private.key", "verify_clients": True},
                 "urls": [], "paths": [], "auto_update_enabled": False}})
    server.start()
    server.hwctl("namespaces", "create", "a")
    key = server.hwctl_json("preauthkeys", "create", "-n", "a", "--reusable")["key"]
    topo.udp_rules("-A")
    env = {"TS_DEBUG_USE_DERP_HTTP": "1"}
    login = "http://%s:%d" % (SERVER_IP, port)
    a = NsClient(topo.ns["a"], server, "a", key=key, login_server=login, env=env,
                 extra=[x % {"side": "a"} for x in extra])
    clients.append(a)
    b = NsClient(topo.ns["b"], server, "b", key=key, login_server=login, env=env,
                 extra=[x % {"side": "b"} for x in extra])
    clients.append(b)
    a.wait_running(20)
    b.wait_running(20)
    try:
        wait_until(lambda: stun_endpoint(a, "b", WAN_B), 20, "a seeing b's NAT endpoint", interval=0.1)
        wait_until(lambda: stun_endpoint(b, "a", WAN_A), 20, "b seeing a's NAT endpoint", interval=0.1)
    except AssertionError as e:
        raise AssertionError("%s; a: %s; b: %s" % (e, a.log_tail(), b.log_tail()))
    return server, a, b


def stun_endpoint(c, peer, wan):
    """peer's endpoint at its NAT's address, as c's netmap has it."""
    p = netmap_peer(c, peer)
    eps = (p or {}).get("Endpoints") or []
    return p and p.get("DiscoKey") and p.get("HomeDERP") == 999 and \
        [e for e in eps if e.startswith(wan + ":")]


def finish(topo, server, clients, ok):
    errors = []
    for c in clients:
        try:
            c.close(check_log=ok)
        except AssertionError as e:
            errors.append(str(e))
    if server:
        server.close(check=ok)
    topo.close()
    if errors and ok:
        raise AssertionError("; ".join(errors))


@case
def nat_derp_then_direct_then_derp():
    why = can_run()
    if why:
        skip(why)
    topo = Topology()
    server = None
    clients = []
    ok = False
    try:
        server, a, b = start_pair(topo, server, clients)
        ip_b = b.ips()[0]
        b_public = stun_endpoint(a, "b", WAN_B)[0]

        # UDP blocked: DERP
        got, text = pongs(a, "b", 3)
        eq(len(got), 3, "pongs while UDP is blocked: %s" % text)
        for p in got:
            eq(p[:3], ("b", ip_b, "DERP(hw)"), "pong while UDP is blocked")
        node_b, st = peer_entry(a, "b")
        eq((st["CurAddr"], st["Relay"]), ("", "hw"), "a's path to b while UDP is blocked")

        # unblocked: direct within 5 s
        topo.udp_rules("-D")
        t0 = time.monotonic()
        direct = None
        while time.monotonic() - t0 < 5 * SLOW and not direct:
            got, text = pongs(a, "b", 1)
            if got and got[0][2] != "DERP(hw)":
                direct = got[0]
        took = time.monotonic() - t0
        check(direct, "no direct pong within %ds of unblocking UDP (last: %s); a: %s" % (5 * SLOW, text, a.log_tail()))
        eq(direct[2], b_public, "the direct path is b's NAT address")
        _, st = peer_entry(a, "b")
        eq(st["CurAddr"], b_public, "a's current address for b")
        _, table, _ = a.cli("status")
        contains(table, "active; direct %s" % b_public)
        print("# direct after %.2f s" % took, flush=True)

        # blocked again: the path dies after its trust window; back to DERP
        topo.udp_rules("-A")
        wait_until(lambda: peer_entry(a, "b")[1]["CurAddr"] == "", 12, "a dropping the dead direct path",
                   interval=0.2)
        got, text = pongs(a, "b", 1)
        check(got and got[0][2] == "DERP(hw)", "ping after the path died: %s" % text)
        _, table, _ = a.cli("status")
        contains(table, 'active; relay "hw"')
        ok = True
    finally:
        finish(topo, server, clients, ok)


def icmp_ok(topo, ns, ip, count=1):
    p = topo.run(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "3", ip, ok=False)
    return p.returncode == 0


@case
def tunnel_traffic_derp_then_direct():
    """The same NATs with real packets: each node has its TUN device, and ICMP to the
    peer's tailnet address works through DERP while UDP is dropped; once it is not,
    WireGuard moves to the direct path within 5 s of the first packets."""
    why = can_run()
    if why:
        skip(why)
    if not shutil.which("ping"):
        skip("ping is not installed")
    topo = Topology()
    server = None
    clients = []
    ok = False
    try:
        server, a, b = start_pair(topo, server, clients,
                                  extra=["--tun", "hwt%(side)s" + str(PID)])
        ip_b = b.ips()[0]
        b_public = stun_endpoint(a, "b", WAN_B)[0]
        check(icmp_ok(topo, "a", ip_b, 3), "ping %s through DERP; a: %s" % (ip_b, a.log_tail()))
        _, st = peer_entry(a, "b")
        eq((st["CurAddr"], st["Relay"]), ("", "hw"), "a's path to b while UDP is dropped")
        check(st.get("TxBytes", 0) > 0 and st.get("RxBytes", 0) > 0, "WireGuard counters: %r" % st)

        topo.udp_rules("-D")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 * SLOW and peer_entry(a, "b")[1]["CurAddr"] != b_public:
            icmp_ok(topo, "a", ip_b)
        took = time.monotonic() - t0
        eq(peer_entry(a, "b")[1]["CurAddr"], b_public,
           "a's path to b within %ds of unblocking UDP" % (5 * SLOW))
        rx_before = peer_entry(a, "b")[1]["RxBytes"]
        check(icmp_ok(topo, "a", ip_b, 3), "ping %s on the direct path" % ip_b)
        check(icmp_ok(topo, "b", a.ips()[0], 3), "ping back from b on the direct path")
        check(peer_entry(a, "b")[1]["RxBytes"] > rx_before, "replies counted on the direct path")
        print("# tunnel direct after %.2f s" % took, flush=True)
        ok = True
    finally:
        finish(topo, server, clients, ok)

main()
