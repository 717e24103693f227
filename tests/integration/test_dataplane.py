"""Two `hwclient up --tun` nodes carrying real packets through headwater's built-in relay.

Namespaces: "net" holds headwater (control + DERP relay + STUN) on 10.79.9.1, reachable from
"a" and "b" over veth pairs; a and b see only net, never each other. Each hwclient
makes its TUN device with the tailnet addresses and routes; they ping each other's
100.64.x address and move 10 MB over TCP with matching SHA-256, through DERP (direct paths
come with the disco branch). `hwclient status --json` shows per-peer counters.
"""
import os
import subprocess
import sys

import hwtest
from hwnet import Net, wait_until
from hwtest import SLOW, case, check, eq
from dptopo import SERVER_IP, NsClient, server_config, topology
from netns import Netns, available

TCPCHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpcheck.py")
PLAIN = {"TS_DEBUG_USE_DERP_HTTP": "1"}


def transfer(nn, sender_ns, receiver_ns, addr, nbytes):
    port = 6201 + os.getpid() % 1000
    rx = nn.popen(receiver_ns, [sys.executable, TCPCHECK, "recv", addr, port], stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    check(rx.stderr.readline().strip() == "listening", "receiver did not start")
    tx = nn.run(sender_ns, sys.executable, TCPCHECK, "send", addr, port, nbytes, timeout=180 * SLOW)
    out, _ = rx.communicate(timeout=60 * SLOW)
    eq(out.split(), tx.stdout.split(), "bytes and SHA-256 received vs sent")


def peer_of(c, name):
    for p in c.status().get("Peer", {}).values():
        if p.get("HostName") == name or (p.get("DNSName") or "").startswith(name + "."):
            return p
    return None


@case
def two_nodes_through_derp():
    why = available()
    if why:
        hwtest.skip(why)
    with Netns() as nn:
        netns, a_ns, b_ns = topology(nn)
        port, stun = 8080 + os.getpid() % 1000, 3478
        wrap = ["ip", "netns", "exec", netns]
        net = Net.__new__(Net)
        net.server = hwtest.Server(config=server_config(port, stun), wrap=wrap)
        net.clients, net.namespaces = [], set()
        ok = False
        try:
            key = net.authkey("dp")
            tuns = {}
            for name, ns in (("a", a_ns), ("b", b_ns)):
                tuns[name] = nn.ifname("t")
                c = NsClient(net.server, name, key=key, ns=ns, env=PLAIN,
                             login_server="http://%s:%d" % (SERVER_IP, port),
                             extra=["--port", "0", "--tun", tuns[name]])
                net.clients.append(c)
            a, b = net.clients
            for c in (a, b):
                c.wait_running(timeout=20)
            ip_a, ip_b = a.ips()[0], b.ips()[0]
            # the TUN device carries the node's addresses and the tailnet route
            addrs = nn.run(a_ns, "ip", "addr", "show", tuns["a"]).stdout
            check(ip_a + "/32" in addrs, "a's TUN has %s: %s" % (ip_a, addrs))
            routes = nn.run(a_ns, "ip", "route", "show").stdout
            check("100.64.0.0/10 dev %s" % tuns["a"] in routes, "tailnet route: %s" % routes)
            for c, peer in ((a, "b"), (b, "a")):
                wait_until(lambda: (peer_of(c, peer) or {}).get("HomeDERP") == 999, 20,
                           "%s to see %s homed at the relay" % (c.hostname, peer), interval=0.1)
            for src_ns, dst in ((a_ns, ip_b), (b_ns, ip_a)):
                p = nn.run(src_ns, "ping", "-c", "3", "-i", "0.2", "-W", "5", dst, check=False, timeout=60)
                check(p.returncode == 0, "ping %s: %s\nA:%s\nB:%s" % (dst, p.stdout[-300:], a.log_tail(40), b.log_tail(40)))
            v6_b = [ip for ip in b.ips() if ":" in ip]
            check(v6_b, "b has an IPv6 tailnet address: %r" % b.ips())
            p = nn.run(a_ns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "5", v6_b[0], check=False, timeout=60)
            check(p.returncode == 0, "ping %s: %s" % (v6_b[0], p.stdout[-300:]))
            transfer(nn, a_ns, b_ns, ip_b, 10 * 1000 * 1000)
            transfer(nn, b_ns, a_ns, ip_a, 2 * 1000 * 1000)
            pb = peer_of(a, "b")
            check(pb.get("TxBytes", 0) > 10 * 1000 * 1000 and pb.get("RxBytes", 0) > 2 * 1000 * 1000,
                  "a's counters for b: %r" % pb)
            check(pb.get("LastHandshake", "") != "", "a's last handshake with b: %r" % pb)
            _, out, _ = a.cli("status")
            line = [l for l in out.splitlines() if ip_b in l]
            check(line and "tx %d rx %d" % (pb["TxBytes"], pb["RxBytes"]) in line[0] or
                  line and " tx " in line[0], "status line for b shows traffic: %s" % out)
            # a new peer (a netmap delta) leaves the existing session alone
            c3 = NsClient(net.server, "c", key=key, ns=netns, env=PLAIN,
                          login_server="http://%s:%d" % (SERVER_IP, port), extra=["--port", "0"])
            net.clients.append(c3)
            c3.wait_running(timeout=20)
            wait_until(lambda: peer_of(a, "c"), 20, "a to see c", interval=0.1)
            pb2 = peer_of(a, "b")
            check(pb2["TxBytes"] >= pb["TxBytes"] and pb2["LastHandshake"] == pb["LastHandshake"],
                  "b's session changed when c joined: %r -> %r" % (pb, pb2))
            p = nn.run(a_ns, "ping", "-c", "1", "-W", "5", ip_b, check=False, timeout=30)
            check(p.returncode == 0, "ping b after c joined: %s" % p.stdout[-300:])
            # stopping removes the device and its routes
            a.down()
            gone = nn.run(a_ns, "ip", "link", "show", tuns["a"], check=False)
            check(gone.returncode != 0, "TUN device left behind")
            ok = True
        finally:
            net.close(check=ok)


hwtest.main()
