#!/usr/bin/env python3
"""Direct paths between hwclients (disco): headwater with its built-in relay and STUN on
127.0.0.1, two or three hwclients; `hwclient ping` answered over a direct 127.0.0.1 /
[::1] path, or through DERP when the peer takes no direct UDP (upstream's
TS_DEBUG_NEVER_DIRECT_UDP knob). Endpoints and disco keys travel through the control
server (MapRequest.Endpoints/DiscoKey -> Node.Endpoints/DiscoKey). Local endpoints are
limited to the loopback interface (HWCLIENT_ENDPOINT_INTERFACES=lo) so no packet goes to
another address of this machine. The NAT case with network namespaces is in
test_paths_netns.py."""
import json
import re

from hwnet import Net, wait_until
from hwtest import case, check, contains, eq, free_port, main

PLAIN = {"TS_DEBUG_USE_DERP_HTTP": "1", "HWCLIENT_ENDPOINT_INTERFACES": "lo"}
PONG_RE = re.compile(r"^pong from (\S+) \((\S+)\) via (\S+) in (\d+ms|0s|[\d.]+s)$", re.M)


def relay_config():
    stun = free_port()
    return {"derp": {"server": {"enabled": True, "region_id": 999, "region_code": "hw",
                                "region_name": "Headwater", "stun_listen_addr": "127.0.0.1:%d" % stun,
                                "private_key_path": "derp_server_private.key", "verify_clients": True},
                     "urls": [], "paths": [], "auto_update_enabled": False}}


def derp(c):
    _, out, _ = c.cli("debug", "derp-stats", "--json")
    return json.loads(out)["DERP"]


def netmap_peer(c, name):
    for p in c.cli_netmap().get("Peers") or []:
        if (p.get("Hostinfo") or {}).get("Hostname") == name:
            return p
    return None


def wait_ready(c, peer, peer_client):
    """c has peer in its netmap with a disco key, a home region and the peer's
    loopback endpoint; both sides' relay connections are up."""
    port = derp(peer_client)["UDPPort"]
    want = "127.0.0.1:%d" % port

    def ready():
        p = netmap_peer(c, peer)
        st = derp(c)
        up = any(x.get("State") == "up" and x.get("Home") for x in st["Connections"])
        return (p and p.get("DiscoKey", "").startswith("discokey:") and p.get("HomeDERP") == 999
                and want in (p.get("Endpoints") or []) and up)
    try:
        wait_until(ready, 20, "%s seeing %s's endpoint %s and disco key" % (c.hostname, peer, want),
                   interval=0.1)
    except AssertionError as e:
        raise AssertionError("%s; netmap peer: %s; log: %s" % (e, netmap_peer(c, peer), c.log_tail()))
    return port


def ping(c, peer, *extra, ok=True):
    rc, out, err = c.cli("ping", peer, *extra, ok=ok)
    return rc, out, err


class Setup:
    def __init__(self, names, env_of=None):
        self.net = Net(config=relay_config())
        self.ok = False
        key = self.net.authkey("a")
        self.c = {}
        for n in names:
            env = dict(PLAIN)
            env.update((env_of or {}).get(n, {}))
            self.c[n] = self.net.client(n, key=key, extra=["--port", "0"], env=env)
        for c in self.c.values():
            c.wait_running()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.net.close(check=exc_type is None)
        return False


@case
def map_request_carries_disco_key_and_endpoints():
    with Setup(["a", "b"]) as s:
        a, b = s.c["a"], s.c["b"]
        port_b = wait_ready(a, "b", b)
        p = netmap_peer(a, "b")
        st_b = derp(b)
        eq(p["DiscoKey"], st_b["DiscoKey"], "b's disco key as a sees it")
        # STUN (the relay on 127.0.0.1) and the loopback addresses, with upstream's
        # EndpointTypes numbering kept by the server
        check("127.0.0.1:%d" % port_b in p["Endpoints"], "endpoints %r" % p["Endpoints"])
        eq(sorted(p["Endpoints"]), sorted(st_b["Endpoints"]), "b's endpoints as a sees them")
        contains(b.log_text(), "magicsock: endpoints: 127.0.0.1:%d" % port_b)


@case
def ping_goes_direct_on_loopback():
    with Setup(["a", "b"]) as s:
        a, b = s.c["a"], s.c["b"]
        port_b = wait_ready(a, "b", b)
        wait_ready(b, "a", a)
        ip_b = b.ips()[0]
        _, out, _ = ping(a, "b")
        pongs = PONG_RE.findall(out)
        check(pongs, "no pong line in %r" % out)
        last = pongs[-1]
        eq(last[:2], ("b", ip_b), "who answered")
        check(last[2] in ("127.0.0.1:%d" % port_b, "[::1]:%d" % port_b),
              "the last pong came via %s, want b's loopback port %d: %r" % (last[2], port_b, out))
        for earlier in pongs[:-1]:
            eq(earlier[2], "DERP(hw)", "an earlier pong's path")
        # by tailnet IP and by node key too; the direct path is known now: one pong
        node_key = [k for k, v in a.status()["Peer"].items() if v["HostName"] == "b"][0]
        for target in (ip_b, node_key):
            _, out, _ = ping(a, target, "-c", "1")
            m = PONG_RE.findall(out)
            check(len(m) == 1 and m[0][2] != "DERP(hw)", "ping %s: %r" % (target, out))
        # status: the peer is active over that path, in tailscale's words
        peer = a.status()["Peer"][node_key]
        check(peer["CurAddr"] in ("127.0.0.1:%d" % port_b, "[::1]:%d" % port_b), "CurAddr %r" % peer)
        eq(peer["Relay"], "hw", "the peer's relay")
        _, table, _ = a.cli("status")
        line = [l for l in table.splitlines() if " b " in l or l.split()[1:2] == ["b"]][0]
        contains(line, "active; direct %s" % peer["CurAddr"])
        # b answered the pings and learnt where a pinged from
        st = b.status()["Peer"]
        eq(sorted(v["DiscoPingsAnswered"] > 0 for v in st.values()), [True], "b answered a's pings")


@case
def ping_through_derp_when_peer_takes_no_direct_udp():
    with Setup(["a", "c"], env_of={"c": {"TS_DEBUG_NEVER_DIRECT_UDP": "1"}}) as s:
        a, c = s.c["a"], s.c["c"]
        wait_ready(a, "c", c)
        wait_ready(c, "a", a)
        ip_c = c.ips()[0]
        _, out, err = ping(a, "c", "-c", "3")
        pongs = PONG_RE.findall(out)
        eq(len(pongs), 3, "pongs in %r" % out)
        for p in pongs:
            eq(p[:3], ("c", ip_c, "DERP(hw)"), "pong")
        contains(err, "direct connection not established")
        node_key = [k for k, v in a.status()["Peer"].items() if v["HostName"] == "c"][0]
        peer = a.status()["Peer"][node_key]
        eq((peer["CurAddr"], peer["Relay"], peer["Active"]), ("", "hw", True), "a's path to c")
        _, table, _ = a.cli("status")
        contains(table, 'active; relay "hw"')


@case
def ping_errors_are_clear():
    with Setup(["a"]) as s:
        a = s.c["a"]
        rc, out, err = ping(a, "nosuchpeer", ok=False)
        contains(err, 'no peer "nosuchpeer" in the network map')
        rc, out, err = a.cli("ping", ok=False)
        contains(err, "which peer?")


main()
