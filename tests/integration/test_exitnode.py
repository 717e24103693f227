"""Subnet routers and exit nodes on the client side (root; namespaces made here).

Namespaces from dptopo: "net" holds headwater (control + DERP + STUN), "a" and "b" reach
only it. The subnet-router case adds a "lan" namespace behind b (10.80.0.0/24) with no
route back to the tailnet: only b's masquerade makes replies find their way. The exit-node
case adds a "pub" namespace behind b's uplink holding "public" addresses (198.51.100.7,
2001:db8:2::7), reached by a through b with `--exit-node b`. hwclient itself turns on
forwarding and installs its netfilter chains and policy rules; the test checks that the
namespaces' sysctls, iptables rules, ip rules and routes are back after `hwclient down`.
"""
import os
import subprocess
import sys

import hwtest
from hwnet import Net, run_hwclient, wait_until
from hwtest import case, check, eq
from dptopo import SERVER_IP, NsClient, server_config, topology
from netns import Netns, available

TCPCHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpcheck.py")
PLAIN = {"TS_DEBUG_USE_DERP_HTTP": "1"}


def peer_of(c, name):
    for p in c.status().get("Peer", {}).values():
        if p.get("HostName") == name or (p.get("DNSName") or "").startswith(name + "."):
            return p
    return None


def firewall_state(nn, ns):
    """What hwclient may change on a router: forwarding sysctls and every iptables rule."""
    out = []
    for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
        out.append(nn.run(ns, "sysctl", "-n", key).stdout.strip())
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat"):
            out.append(nn.run(ns, tool, "-w", "-t", table, "-S").stdout)
    return out


def routing_state(nn, ns):
    """What hwclient may change on an exit-node client: rules and all routing tables
    (without the kernel's link-local entries, which come when the veth's address does)."""
    out = [nn.run(ns, "ip", "-4", "rule").stdout, nn.run(ns, "ip", "-6", "rule").stdout,
           nn.run(ns, "ip", "-4", "route", "show", "table", "all").stdout,
           nn.run(ns, "ip", "-6", "route", "show", "table", "all").stdout]
    return [[l for l in t.splitlines() if "fe80:" not in l] for t in out]


def whoami(nn, ns, addr, port, n):
    srv = nn.popen(ns, [sys.executable, TCPCHECK, "whoami", addr, port, n], stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True)
    check(srv.stderr.readline().strip() == "listening", "whoami server did not start")
    return srv


def ask(nn, ns, addr, port):
    p = nn.run(ns, sys.executable, TCPCHECK, "ask", addr, port, check=False, timeout=20)
    if p.returncode != 0:
        sys.stderr.write("(%s)\n" % p.stderr.strip())
    return p.stdout.strip() if p.returncode == 0 else None


def start(nn, netns, port, stun):
    net = Net.__new__(Net)
    net.server = hwtest.Server(config=server_config(port, stun), wrap=["ip", "netns", "exec", netns])
    net.clients, net.namespaces = [], set()
    return net


def client(net, nn, name, ns, port, key, tun, extra):
    c = NsClient(net.server, name, key=key, ns=ns, env=PLAIN, login_server="http://%s:%d" % (SERVER_IP, port),
                 extra=["--port", "0", "--tun", tun] + extra)
    net.clients.append(c)
    return c


@case
def flag_errors():
    rc, _, err = run_hwclient("up", "--login-server", "http://127.0.0.1:1", "--exit-node", "b",
                              "--tun", "none", ok=False)
    eq(rc, 2, "exit status of --exit-node without a TUN device")
    check("--exit-node b needs a TUN device" in err and "not --tun=none" in err, err)
    rc, _, err = run_hwclient("up", "--login-server", "http://127.0.0.1:1", "--snat-subnet-routes=maybe", ok=False)
    eq(rc, 2, "exit status of a bad --snat-subnet-routes")
    check("--snat-subnet-routes=maybe: expected true or false" in err, err)


@case
def subnet_router_forwards_and_masquerades():
    # b advertises the LAN 10.80.0.0/24 behind it; the LAN host has no route to the
    # tailnet, so it answers only through b's masquerade. a (--accept-routes) reaches it
    # once the admin enables the route, not before, and no longer after disable.
    why = available()
    if why:
        hwtest.skip(why)
    with Netns() as nn:
        netns, a_ns, b_ns = topology(nn)
        lan = nn.ns("lan")
        nn.veth(b_ns, "10.80.0.1/24", lan, "10.80.0.2/24")
        before = firewall_state(nn, b_ns)
        eq(before[0], "0", "b's ip_forward before hwclient")
        port, stun = 8080 + os.getpid() % 1000, 3478
        net = start(nn, netns, port, stun)
        ok = False
        try:
            key = net.authkey("dp")
            tun_a = nn.ifname("t")
            a = client(net, nn, "a", a_ns, port, key, tun_a, ["--accept-routes"])
            b = client(net, nn, "b", b_ns, port, key, nn.ifname("t"), ["--advertise-routes", "10.80.0.0/24"])
            for c in (a, b):
                c.wait_running(timeout=20)
            during = firewall_state(nn, b_ns)
            eq(during[0], "1", "b's ip_forward with hwclient running")
            check("-A FORWARD -j hw-forward" in during[2], "b's FORWARD hook: %s" % during[2])
            check("MASQUERADE" in during[3] and "hw-postrouting" in during[3], "b's nat rules: %s" % during[3])
            wait_until(lambda: (peer_of(a, "b") or {}).get("HomeDERP") == 999, 20, "a to see b's home", interval=0.1)
            lport = 7100 + os.getpid() % 1000
            srv = whoami(nn, lan, "10.80.0.2", lport, 1)
            p = nn.run(a_ns, "ping", "-c", "1", "-W", "2", "10.80.0.2", check=False)
            check(p.returncode != 0, "the LAN answered before the route was enabled")
            eq(ask(nn, a_ns, "10.80.0.2", lport), None, "TCP to the LAN before enable")
            check("10.80.0.0/24" not in nn.run(a_ns, "ip", "route").stdout, "route before enable")
            wait_until(lambda: "10.80.0.0/24" in net.hwctl("routes", "list", "-i", b.node_id())[1], 10,
                       "the advertised route at the server", interval=0.1)
            net.hwctl("routes", "enable", "-i", b.node_id(), "-r", "10.80.0.0/24")
            wait_until(lambda: "10.80.0.0/24 dev %s" % tun_a in nn.run(a_ns, "ip", "route").stdout, 20,
                       "a's route to the LAN through its TUN", interval=0.1)
            p = nn.run(a_ns, "ping", "-c", "3", "-i", "0.2", "-W", "5", "10.80.0.2", check=False, timeout=60)
            check(p.returncode == 0, "ping the LAN host through b: %s\n%s" % (p.stdout[-300:], b.log_tail(30)))
            got = ask(nn, a_ns, "10.80.0.2", lport)
            eq(got, "10.80.0.1", "the LAN host sees b's LAN address (masquerade)")
            srv.wait(10)
            net.hwctl("routes", "disable", "-i", b.node_id(), "-r", "10.80.0.0/24")
            wait_until(lambda: "10.80.0.0/24" not in nn.run(a_ns, "ip", "route").stdout, 20,
                       "a's LAN route gone after disable", interval=0.1)
            p = nn.run(a_ns, "ping", "-c", "1", "-W", "2", "10.80.0.2", check=False)
            check(p.returncode != 0, "the LAN answered after the route was disabled")
            b.down()
            eq(firewall_state(nn, b_ns), before, "b's sysctls and iptables rules after `hwclient down`")
            ok = True
        finally:
            net.close(check=ok)


@case
def router_cleans_up_after_sigterm_and_crash():
    # SIGTERM removes everything; SIGKILL leaves the chains and the sysctl behind, and the
    # next start removes them (and puts the saved sysctl back when that one stops).
    why = available()
    if why:
        hwtest.skip(why)
    with Netns() as nn:
        netns, a_ns, b_ns = topology(nn)
        before = firewall_state(nn, b_ns)
        port, stun = 8080 + os.getpid() % 1000, 3478
        net = start(nn, netns, port, stun)
        ok = False
        try:
            key = net.authkey("dp")
            tun = nn.ifname("t")
            b = client(net, nn, "b", b_ns, port, key, tun, ["--advertise-exit-node"])
            b.wait_running(timeout=20)
            check(firewall_state(nn, b_ns) != before, "hwclient changed nothing on b")
            b.proc.terminate()
            eq(b.wait_exit(10), 0, "exit status after SIGTERM")
            eq(firewall_state(nn, b_ns), before, "b's state after SIGTERM")
            b.start()
            b.wait_running(timeout=20)
            b.kill()
            left = firewall_state(nn, b_ns)
            eq(left[0], "1", "forwarding left on by the killed hwclient")
            check("hw-forward" in left[2], "chains left by the killed hwclient")
            b.extra = ["--port", "0", "--tun", tun]
            b.start()
            b.wait_running(timeout=20)
            eq(firewall_state(nn, b_ns), before, "b's state once the next hwclient (no routes) has started")
            b.down()
            b.extra = ["--port", "0", "--tun", tun, "--advertise-routes", "10.81.0.0/24", "--snat-subnet-routes=false"]
            b.start()
            b.wait_running(timeout=20)
            st = firewall_state(nn, b_ns)
            check("hw-forward" in st[2] and "MASQUERADE" not in st[3], "--snat-subnet-routes=false: %s" % st[3])
            b.down()
            eq(firewall_state(nn, b_ns), before, "b's state after the run without SNAT")
            eq(firewall_state(nn, b_ns), before, "b's state after a killed run and a clean one")
            ok = True
        finally:
            net.close(check=ok)


@case
def exit_node_carries_default_route():
    # b offers itself as an exit node with an uplink to "pub"; a uses --exit-node b and
    # reaches pub's addresses through the tunnel while its own control and DERP
    # connections go around it (they carry the bypass mark).
    why = available()
    if why:
        hwtest.skip(why)
    with Netns() as nn:
        netns, a_ns, b_ns = topology(nn)
        pub = nn.ns("pub")
        nn.veth(b_ns, "192.0.2.2/24", pub, "192.0.2.1/24")
        nn.veth(b_ns, "2001:db8:1::2/64", pub, "2001:db8:1::1/64")
        nn.run(pub, "ip", "addr", "add", "198.51.100.7/32", "dev", "lo")
        nn.run(pub, "ip", "-6", "addr", "add", "2001:db8:2::7/128", "dev", "lo")
        nn.route(b_ns, "default", "192.0.2.1")
        nn.run(b_ns, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::1")
        a_before = routing_state(nn, a_ns)
        b_before = firewall_state(nn, b_ns)
        port, stun = 8080 + os.getpid() % 1000, 3478
        net = start(nn, netns, port, stun)
        ok = False
        try:
            key = net.authkey("dp")
            b = client(net, nn, "b", b_ns, port, key, nn.ifname("t"), ["--advertise-exit-node"])
            b.wait_running(timeout=20)
            tun_a = nn.ifname("t")
            a = client(net, nn, "a", a_ns, port, key, tun_a, ["--exit-node", "b"])
            a.wait_running(timeout=20)
            wait_until(lambda: (peer_of(a, "b") or {}).get("HomeDERP") == 999, 20, "a to see b's home", interval=0.1)
            # the policy rules are in while b is not yet an exit node: nothing leaks around
            rules = nn.run(a_ns, "ip", "rule").stdout
            check("5270:" in rules and "lookup 52" in rules and "fwmark 0x80000/0xff0000" in rules,
                  "a's policy rules: %s" % rules)
            p = nn.run(a_ns, "ping", "-c", "1", "-W", "2", "198.51.100.7", check=False)
            check(p.returncode != 0, "the public address answered before the exit routes were enabled")
            check(not (peer_of(a, "b") or {}).get("ExitNode"), "b is the exit node before approval")
            wait_until(lambda: "0.0.0.0/0" in net.hwctl("routes", "list", "-i", b.node_id())[1], 10,
                       "the advertised exit routes at the server", interval=0.1)
            net.hwctl("routes", "enable", "-i", b.node_id(), "-r", "0.0.0.0/0")
            wait_until(lambda: (peer_of(a, "b") or {}).get("ExitNode") is True, 20, "a to use b as exit node",
                       interval=0.1)
            _, out, _ = a.cli("status")
            line = [l for l in out.splitlines() if b.ips()[0] in l]
            check(line and "exit node" in line[0], "status line for b: %s" % out)
            st = a.status()
            eq(st.get("ExitNodeStatus", {}).get("TailscaleIPs"), peer_of(a, "b")["TailscaleIPs"], "ExitNodeStatus")
            check("default dev %s" % tun_a in nn.run(a_ns, "ip", "route", "show", "table", "52").stdout,
                  "a's default route in table 52")
            p = nn.run(a_ns, "ping", "-c", "3", "-i", "0.2", "-W", "5", "198.51.100.7", check=False, timeout=60)
            check(p.returncode == 0, "ping the public address through b: %s\n%s\n%s" %
                  (p.stdout[-300:], a.log_tail(20), b.log_tail(20)))
            p = nn.run(a_ns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "5", "2001:db8:2::7", check=False, timeout=60)
            check(p.returncode == 0, "ping -6 the public address through b: %s" % p.stdout[-300:])
            lport = 7200 + os.getpid() % 1000
            srv = whoami(nn, pub, "198.51.100.7", lport, 1)
            eq(ask(nn, a_ns, "198.51.100.7", lport), "192.0.2.2", "the public server sees b's uplink address")
            srv.wait(10)
            srv = whoami(nn, pub, "2001:db8:2::7", lport, 1)
            eq(ask(nn, a_ns, "2001:db8:2::7", lport), "2001:db8:1::2", "over IPv6 too")
            srv.wait(10)
            # a's control connection and DERP still work: it hears of a new node, and b
            # is reached through the relay (a and b have no direct path)
            check(a.status().get("ControlConnected"), "a's control connection")
            c3 = NsClient(net.server, "c", key=key, ns=netns, env=PLAIN,
                          login_server="http://%s:%d" % (SERVER_IP, port), extra=["--port", "0"])
            net.clients.append(c3)
            c3.wait_running(timeout=20)
            wait_until(lambda: peer_of(a, "c"), 20, "a to hear of c over its control connection", interval=0.1)
            eq(peer_of(a, "b").get("Relay"), "hw", "a reaches b through DERP")
            p = nn.run(a_ns, "ping", "-c", "1", "-W", "5", b.ips()[0], check=False, timeout=30)
            check(p.returncode == 0, "ping b's tailnet address: %s" % p.stdout[-300:])
            # a's own LAN (the veth to net) is captured by the tunnel too, as tailscaled's
            # default: 10.79.0.1 is not reachable through b
            p = nn.run(a_ns, "ping", "-c", "1", "-W", "2", "10.79.0.1", check=False)
            check(p.returncode != 0, "a's LAN answered around the exit node")
            a.down()
            eq(routing_state(nn, a_ns), a_before, "a's rules and routing tables after `hwclient down`")
            # --exit-node-allow-lan-access: throw routes for the LAN in table 52
            a.extra = ["--port", "0", "--tun", tun_a, "--exit-node", "b", "--exit-node-allow-lan-access"]
            a.start()
            a.wait_running(timeout=20)
            wait_until(lambda: (peer_of(a, "b") or {}).get("ExitNode") is True, 20, "a to use b again", interval=0.1)
            t52 = nn.run(a_ns, "ip", "route", "show", "table", "52").stdout
            check("throw 10.79.0.0/24" in t52, "a's table 52 with LAN access: %s" % t52)
            p = nn.run(a_ns, "ping", "-c", "1", "-W", "5", "10.79.0.1", check=False, timeout=30)
            check(p.returncode == 0, "a's LAN with --exit-node-allow-lan-access: %s" % p.stdout[-300:])
            p = nn.run(a_ns, "ping", "-c", "1", "-W", "5", "198.51.100.7", check=False, timeout=30)
            check(p.returncode == 0, "the public address with LAN access: %s" % p.stdout[-300:])
            a.down()
            eq(routing_state(nn, a_ns), a_before, "a's rules and routing tables after the second run")
            b.down()
            eq(firewall_state(nn, b_ns), b_before, "b's sysctls and iptables rules after `hwclient down`")
            ok = True
        finally:
            net.close(check=ok)


hwtest.main()
