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
from hwtest import SLOW, case, check, eq, skip
from netns import Netns, available
from wgpair import HWCLIENT, Side, log_of, start_hwclient, start_wggo

TCPCHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpcheck.py")
PORT_A, PORT_B = 51820, 51821
TRANSFER = 10 * 1000 * 1000


def need_tools(*tools):
    why = available()
    if why:
        skip(why)
    for t in tools:
        if not shutil.which(t):
            skip("%s is not installed (make deps)" % t)


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
                if kind_a == "hwclient":
                    # a source outside b's AllowedIPs (as a configured it) is dropped by a
                    nn.run(b.ns, "ip", "addr", "add", "10.78.0.9/32", "dev", b.dev)
                    p = nn.run(b.ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", "10.78.0.9", a.tun4,
                               check=False)
                    check(p.returncode != 0, "a answered a source outside b's AllowedIPs: %s" % p.stdout)
                    ping(nn, b, a.tun4)
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
