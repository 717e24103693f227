"""`hwclient up --tun=userspace`: the daemon runs the userspace netstack with its SOCKS5 and
HTTP CONNECT proxies, fed from the netmap (its own addresses, MagicDNS names of the peers,
their AllowedIPs). Until the WireGuard data plane is wired to it, packets the stack sends are
counted as unrouted: a connection to a peer resolves, leaves the stack, and times out."""
import socket
import struct
import time

import hwtest
from hwnet import Net, run_hwclient
from hwtest import free_port
from hwtest import SLOW, case, check, contains, eq, main

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
    _, _, err = run_hwclient("up", "--login-server", "http://127.0.0.1:1", "--tun", "hw0",
                             ok=False)
    contains(err, "--tun", "stderr")


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
        check(us["PacketsOut"] >= 5 and us["PacketsUnrouted"] == us["PacketsOut"],
              "SYNs counted: %r" % us)
        contains(c1.log_text(), "nosuchbox:80: unknown name", "box1 log")

        # HTTP CONNECT says the same in its terms.
        s = socket.create_connection(("127.0.0.1", hport), timeout=20 * SLOW)
        s.sendall(b"CONNECT 192.0.2.1:443 HTTP/1.1\r\n\r\n")
        contains(s.recv(1000).decode(), "HTTP/1.1 502 ", "CONNECT outside the tailnet")
        s.close()
        c1.down()


main()
