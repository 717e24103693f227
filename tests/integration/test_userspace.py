"""`hwclient up --tun=userspace`: the daemon runs the userspace netstack with its SOCKS5 and
HTTP CONNECT proxies, fed from the netmap (its own addresses, MagicDNS names of the peers,
their addresses) and wired to the WireGuard device instead of a TUN.

The first cases run two daemons on 127.0.0.1 without relays: names and reachability from the
netmap, and packets the stack sends counted as unrouted while no peer path exists (the peer
has no DERP home, so the dial times out). The last one is the whole path, in namespaces as
test_dataplane.py: a userspace node reaches a TCP service on a `--tun` peer's tailnet address
through SOCKS5 and WireGuard over headwater's DERP relay, with no TUN device on its side."""
import hashlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

import hwtest
from hwnet import Net, run_hwclient, wait_until
from hwtest import SLOW, case, check, contains, eq, free_port, main

TIMEOUT_ENV = {"HWCLIENT_PROXY_CONNECT_TIMEOUT_MS": "1000"}


def socks(port, host, dport, atyp=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=20 * SLOW)
    s.sendall(b"\x05\x01\x00")
    eq(s.recv(2), b"\x05\x00", "method selection")
    try:
        a = b"\x01" + socket.inet_pton(socket.AF_INET, host)
    except OSError:
        try:
            a = b"\x04" + socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            a = b"\x03" + bytes([len(host)]) + host.encode()
    s.sendall(b"\x05\x01\x00" + a + struct.pack(">H", dport))
    rep = s.recv(10)
    s.close()
    return rep[1]


def tailnet_v4(addrs):
    return [a.split("/")[0] for a in addrs if ":" not in a][0]


@case
def flags_are_checked():
    _, _, err = run_hwclient("up", "--login-server", "http://127.0.0.1:1", "--socks5",
                             "127.0.0.1:1055", ok=False)
    contains(err, "--tun=userspace", "stderr")
    with tempfile.TemporaryDirectory(prefix="hwus-") as d:
        _, _, err = run_hwclient("up", "--login-server", "http://127.0.0.1:1", "--statedir", d,
                                 "--tun=userspace", "--socks5", "nowhere", ok=False)
        contains(err, 'socks5: listen address "nowhere"', "stderr")
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        try:
            _, _, err = run_hwclient("up", "--login-server", "http://127.0.0.1:1", "--statedir", d,
                                     "--tun=userspace", "--http-proxy",
                                     "127.0.0.1:%d" % busy.getsockname()[1], "--socks5",
                                     "127.0.0.1:0", ok=False)
            contains(err, "http-proxy: listen on 127.0.0.1:%d" % busy.getsockname()[1], "stderr")
        finally:
            busy.close()


@case
def userspace_daemon_resolves_and_routes_by_netmap():
    with Net() as net:
        key = net.authkey("default")
        sport, hport = free_port(), free_port()
        c1 = net.client("box1", key=key, env=TIMEOUT_ENV,
                        extra=["--tun=userspace", "--socks5", "127.0.0.1:%d" % sport,
                               "--http-proxy", "127.0.0.1:%d" % hport])
        c2 = net.client("box2", key=key)
        c1.wait_running()
        c2.wait_running()
        c1.wait_for(lambda st: any(p["HostName"] == "box2" for p in (st.get("Peer") or {}).values()),
                    10, "box2 in box1's netmap")
        st = c1.status()
        us = st.get("Userspace")
        check(us is not None, "status has no Userspace section: %r" % st)
        eq(us["SOCKS5"], "127.0.0.1:%d" % sport, "SOCKS5 address in status")
        eq(us["HTTPProxy"], "127.0.0.1:%d" % hport, "HTTP proxy address in status")
        _, text, _ = c1.cli("status")
        contains(text, "SOCKS5 on 127.0.0.1:%d, HTTP CONNECT on 127.0.0.1:%d" % (sport, hport),
                 "hwclient status")

        nm = c1.cli_netmap()
        peer = [p for p in nm["Peers"] if p["Name"].startswith("box2.")][0]
        fqdn = peer["Name"]
        peer_ip = tailnet_v4(peer["Addresses"])

        # Outside every peer's AllowedIPs: refused at once, nothing leaves the stack.
        t0 = time.monotonic()
        eq(socks(sport, "192.0.2.1", 80), 3, "reply for an address outside the tailnet")
        check(time.monotonic() - t0 < 1 * SLOW, "outside address answered slowly")
        eq(socks(sport, "nosuchbox", 80), 4, "reply for a name not in the netmap")
        eq(c1.status()["Userspace"]["PacketsOut"], 0, "packets sent before any dial")

        # The short name, the FQDN (with and without the dot) and the address: each dial
        # leaves the stack as a SYN from our own tailnet address, then times out
        # (no data plane yet).
        for target in ("box2", fqdn, fqdn.rstrip("."), "BOX2", peer_ip):
            eq(socks(sport, target, 80), 4, "reply for %s without a data plane" % target)
        us = c1.status()["Userspace"]
        check(us["PacketsOut"] >= 5, "SYNs left the stack: %r" % us)
        contains(c1.log_text(), "nosuchbox:80: unknown name", "box1 log")

        # HTTP CONNECT says the same in its terms.
        s = socket.create_connection(("127.0.0.1", hport), timeout=20 * SLOW)
        s.sendall(b"CONNECT 192.0.2.1:443 HTTP/1.1\r\n\r\n")
        contains(s.recv(1000).decode(), "HTTP/1.1 502 ", "CONNECT outside the tailnet")
        s.close()
        c1.down()


@case
def socks5_reaches_a_tun_peer_through_wireguard():
    from dptopo import SERVER_IP, NsClient, server_config, topology
    from netns import Netns, available
    from nstunlab import SERVER as FILE_SERVER
    why = available()
    if why:
        hwtest.skip(why)
    here = os.path.dirname(os.path.abspath(__file__))
    with Netns() as nn, tempfile.TemporaryDirectory(prefix="hwus-") as tmp:
        netns, a_ns, b_ns = topology(nn)
        port, stun = 8080 + os.getpid() % 1000, 3478
        net = Net.__new__(Net)
        net.server = hwtest.Server(config=server_config(port, stun), wrap=["ip", "netns", "exec", netns])
        net.clients, net.namespaces = [], set()
        ok = False
        try:
            key = net.authkey("dp")
            sport = 1055
            login = "http://%s:%d" % (SERVER_IP, port)
            plain = {"TS_DEBUG_USE_DERP_HTTP": "1", "HWCLIENT_PROXY_CONNECT_TIMEOUT_MS": "3000"}
            a = NsClient(net.server, "a", key=key, ns=a_ns, env=plain, login_server=login,
                         extra=["--port", "0", "--tun=userspace", "--socks5", "127.0.0.1:%d" % sport])
            net.clients.append(a)
            b = NsClient(net.server, "b", key=key, ns=b_ns, env=plain, login_server=login,
                         extra=["--port", "0", "--tun", nn.ifname("t")])
            net.clients.append(b)
            for c in (a, b):
                c.wait_running(timeout=20)
            # no TUN device on a's side: only lo and the veth
            links = nn.run(a_ns, "ip", "-o", "link").stdout
            check("tun" not in links.lower() and len(links.splitlines()) == 2,
                  "a has a device besides lo and its veth: %s" % links)
            ip4_b = [ip for ip in b.ips() if ":" not in ip][0]
            ip6_b = [ip for ip in b.ips() if ":" in ip][0]
            data = os.path.join(tmp, "data.bin")
            with open(data, "wb") as f:
                f.write(os.urandom(10 * 1000 * 1000))
            with open(data, "rb") as f:
                want = "%d %s" % (10 * 1000 * 1000, hashlib.sha256(f.read()).hexdigest())
            srv = nn.popen(b_ns, [sys.executable, "-c", FILE_SERVER, data, ip4_b, ip6_b],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                eq(srv.stdout.readline().strip(), "listening", "server on b")
                nm = a.cli_netmap()
                fqdn = [p["Name"] for p in nm["Peers"] if p["Name"].startswith("b.")][0]

                def get(host, port_, data_=None):
                    argv = [sys.executable, os.path.join(here, "socks5get.py"), str(sport), host,
                            str(port_)] + ([data_] if data_ else [])
                    return nn.run(a_ns, *argv, check=False, timeout=120 * SLOW).stdout.split("\n")

                # the first dial may wait for the WireGuard handshake over DERP
                wait_until(lambda: get("b", 8081, "hi")[:2] == ["reply 0", "7 " + hashlib.sha256(b"echo:hi").hexdigest()],
                           30, "an echo through SOCKS5 to b", interval=0.5)
                for host in ("b", fqdn, ip4_b, ip6_b):
                    out = get(host, 8080)
                    eq(out[:2], ["reply 0", want], "10 MB from b via %s" % host)
                eq(get(ip4_b, 8099)[0], "reply 5", "no listener on b: connection refused")
                eq(get("100.64.255.254", 80)[0], "reply 3", "no such peer: network unreachable")
                us = a.status()["Userspace"]
                check(us["PacketsIn"] > 7000 and us["PacketsOut"] > 1000, "a's stack counters: %r" % us)
            finally:
                srv.stdin.close()
                srv.wait(10)
            a.down()
            ok = True
        finally:
            net.close(check=ok)


main()
