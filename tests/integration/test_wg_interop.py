"""hwclient's WireGuard against wireguard-go, and against itself (`hwclient wg`).

Two namespaces joined by a veth pair (10.77.0.1 / 10.77.0.2). On one side wireguard-go
(the Debian package, configured with `wg set`), on the other `hwclient wg -c FILE`; tunnel
addresses 10.78.0.1 / 10.78.0.2 (and fd78::1 / fd78::2). Ping both ways, then 10 MB over
TCP both ways with matching SHA-256.
"""
import base64
import os
import shutil
import subprocess
import sys
import tempfile

import hwtest
from hwtest import BUILD, SLOW, case, check, eq, skip
from netns import Netns, available

HWCLIENT = os.path.join(BUILD, "hwclient")
TCPCHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpcheck.py")
PORT_A, PORT_B = 51820, 51821
TRANSFER = 10 * 1000 * 1000


def genkey():
    priv = subprocess.run(["wg", "genkey"], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, stdout=subprocess.PIPE, text=True,
                         check=True).stdout.strip()
    return priv, pub


def need_tools(*tools):
    why = available()
    if why:
        skip(why)
    for t in tools:
        if not shutil.which(t):
            skip("%s is not installed (make deps)" % t)


class Side:
    """One end of the tunnel: a namespace, a key pair, an underlay and a tunnel address."""

    def __init__(self, nn, name, underlay, port, tun4, tun6):
        self.nn, self.ns = nn, nn.ns(name)
        self.priv, self.pub = genkey()
        self.underlay, self.port, self.tun4, self.tun6 = underlay, port, tun4, tun6
        self.dev = nn.ifname("w")
        self.proc = None
        self.log = None


def start_hwclient(side, peer, dirpath):
    conf = os.path.join(dirpath, "%s.conf" % side.dev)
    with open(conf, "w") as f:
        f.write("[Interface]\nPrivateKey = %s\nListenPort = %d\nAddress = %s/24, %s/64\n\n"
                "[Peer]\nPublicKey = %s\nEndpoint = %s:%d\nAllowedIPs = %s/32, %s/128\n"
                % (side.priv, side.port, side.tun4, side.tun6, peer.pub, peer.underlay, peer.port,
                   peer.tun4, peer.tun6))
    side.log = open(os.path.join(dirpath, "%s.log" % side.dev), "w+")
    side.proc = side.nn.popen(side.ns, [HWCLIENT, "wg", "-c", conf, "--tun", side.dev],
                              stdout=side.log, stderr=subprocess.STDOUT)
    side.nn.wait_for(lambda: side.proc.poll() is not None or
                     side.tun4 in side.nn.run(side.ns, "ip", "-4", "addr", "show", side.dev, check=False).stdout,
                     10 * SLOW, "hwclient wg to bring %s up" % side.dev)
    check(side.proc.poll() is None, "hwclient wg exited: %s" % log_of(side))


def start_wggo(side, peer, dirpath):
    keyfile = os.path.join(dirpath, "%s.key" % side.dev)
    with open(keyfile, "w") as f:
        f.write(side.priv + "\n")
    side.log = open(os.path.join(dirpath, "%s.log" % side.dev), "w+")
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
    side.proc = side.nn.popen(side.ns, ["wireguard-go", side.dev], stdout=side.log,
                              stderr=subprocess.STDOUT, env=env)
    sock = "/var/run/wireguard/%s.sock" % side.dev
    side.nn.wait_for(lambda: os.path.exists(sock), 10, "wireguard-go's socket")
    nn, ns = side.nn, side.ns
    nn.run(ns, "wg", "set", side.dev, "private-key", keyfile, "listen-port", side.port,
           "peer", peer.pub, "endpoint", "%s:%d" % (peer.underlay, peer.port),
           "allowed-ips", "%s/32,%s/128" % (peer.tun4, peer.tun6))
    nn.run(ns, "ip", "addr", "add", "%s/24" % side.tun4, "dev", side.dev)
    nn.run(ns, "ip", "-6", "addr", "add", "%s/64" % side.tun6, "dev", side.dev, "nodad")
    nn.run(ns, "ip", "link", "set", side.dev, "mtu", "1420", "up")


def log_of(side):
    if not side.log:
        return ""
    side.log.flush()
    side.log.seek(0)
    return side.log.read()[-1500:]


def ping(nn, side, addr):
    p = nn.run(side.ns, "ping", "-c", "3", "-i", "0.2", "-W", "5", addr, check=False, timeout=30)
    check(p.returncode == 0, "ping %s from %s: %s" % (addr, side.ns, p.stdout[-400:]))


def transfer(nn, sender, receiver, addr):
    """TRANSFER bytes from sender to addr (receiver's tunnel address); checksums match."""
    port = 5201 + (os.getpid() % 1000)
    rx = nn.popen(receiver.ns, [sys.executable, TCPCHECK, "recv", addr, port], stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    check(rx.stderr.readline().strip() == "listening", "receiver did not start")
    tx = nn.run(sender.ns, sys.executable, TCPCHECK, "send", addr, port, TRANSFER, timeout=120 * SLOW)
    out, _ = rx.communicate(timeout=60 * SLOW)
    eq(out.split(), tx.stdout.split(), "bytes and SHA-256 received vs sent")
    eq(int(tx.stdout.split()[0]), TRANSFER, "bytes sent")


def pair(kind_a, kind_b):
    need_tools("wg", "ping", *(["wireguard-go"] if "wggo" in (kind_a, kind_b) else []))
    d = tempfile.mkdtemp(prefix="hwwg-")
    try:
        with Netns() as nn:
            a = Side(nn, "a", "10.77.0.1", PORT_A, "10.78.0.1", "fd78::1")
            b = Side(nn, "b", "10.77.0.2", PORT_B, "10.78.0.2", "fd78::2")
            nn.veth(a.ns, "10.77.0.1/24", b.ns, "10.77.0.2/24")
            for side, peer, kind in ((a, b, kind_a), (b, a, kind_b)):
                (start_wggo if kind == "wggo" else start_hwclient)(side, peer, d)
            try:
                ping(nn, a, b.tun4)
                ping(nn, b, a.tun4)
                ping(nn, a, b.tun6)
                transfer(nn, a, b, b.tun4)
                transfer(nn, b, a, a.tun4)
                for side in (a, b):
                    check(side.proc.poll() is None, "%s exited: %s" % (side.dev, log_of(side)))
            except AssertionError as e:
                raise AssertionError("%s | logs: %s | %s" % (e, log_of(a), log_of(b)))
            for side in (a, b):
                side.proc.terminate()
                rc = side.proc.wait(10 * SLOW)
                hwtest._check_sanitizer(log_of(side), side.dev)
                if kind_a == "hwclient" and side is a or kind_b == "hwclient" and side is b:
                    eq(rc, 0, "hwclient wg exit status after SIGTERM")
                    # what it added went with it
                    gone = nn.run(side.ns, "ip", "link", "show", side.dev, check=False)
                    check(gone.returncode != 0, "%s still exists after exit" % side.dev)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@case
def hwclient_and_wireguard_go():
    pair("hwclient", "wggo")


@case
def hwclient_and_hwclient_plain_wg():
    pair("hwclient", "hwclient")


@case
def wg_config_errors():
    d = tempfile.mkdtemp(prefix="hwwg-")
    try:
        bad = os.path.join(d, "bad.conf")
        with open(bad, "w") as f:
            f.write("[Interface]\nPrivateKey = %s\nDNS = 1.1.1.1\n" % base64.b64encode(b"k" * 32).decode())
        p = subprocess.run([HWCLIENT, "wg", "-c", bad], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=10)
        eq(p.returncode, 1, "exit status")
        hwtest.contains(p.stderr, "bad.conf:3: DNS is not supported in [Interface]")
        with open(bad, "w") as f:
            f.write("[Interface]\nPrivateKey = nope\n")
        p = subprocess.run([HWCLIENT, "wg", "-c", bad], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=10)
        hwtest.contains(p.stderr, "bad.conf:2: PrivateKey: expected 44 characters of base64")
        p = subprocess.run([HWCLIENT, "wg", "-c", bad, "--tun", "userspace"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=10)
        hwtest.contains(p.stderr, "not supported yet")
    finally:
        shutil.rmtree(d, ignore_errors=True)


hwtest.main()
