#!/usr/bin/env python3
"""hwclient's DERP half through real hwrelay processes on 127.0.0.1: headwater (its own
relay off) hands out a DERP map read from derp.paths (a Headscale-style YAML file
written here); hwclients measure the regions, pick a home, tell the server, connect,
and exchange numbered packets with `hwclient debug derp-send`.

Plain HTTP to the relays (TS_DEBUG_USE_DERP_HTTP=1) except in the TLS cases, which use
hwrelay's self-signed IP certificate pinned by CertName."""
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.request

import hwtest
from hwnet import Net, run_hwclient, wait_until
from hwtest import SLOW, case, check, contains, eq, main
from relayctl import Relay, free_port

PLAIN = {"TS_DEBUG_USE_DERP_HTTP": "1"}
DNS_SUFFIX = ".headwater.net."


def node_yaml(rid, relay, stun_port=None, certname=None):
    lines = ["      - name: %da" % rid,
             "        regionid: %d" % rid,
             "        hostname: 127.0.0.1",
             "        ipv4: 127.0.0.1",
             "        ipv6: none",
             "        derpport: %d" % relay.port,
             "        stunport: %d" % (stun_port if stun_port is not None else relay.stun_port)]
    if certname:
        lines.append('        certname: "%s"' % certname)
    return lines


def write_derp_yaml(path, regions):
    """regions: (id, code, name, relay[, node options])."""
    lines = ["regions:"]
    for r in regions:
        rid, code, name, relay = r[:4]
        opts = r[4] if len(r) > 4 else {}
        lines += ["  %d:" % rid, "    regionid: %d" % rid, "    regioncode: %s" % code,
                  "    regionname: %s" % name, "    nodes:"]
        lines += node_yaml(rid, relay, **opts)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Setup:
    """Relays (started by the caller), the DERP map file, headwater and its clients."""

    def __init__(self, relays, regions, server_port=None, extra_config=None):
        self.relays = list(relays)
        self.tmp = tempfile.mkdtemp(prefix="hwcd-")
        self.yaml = os.path.join(self.tmp, "derp.yaml")
        write_derp_yaml(self.yaml, regions)
        config = {"derp": {"server": {"enabled": False}, "paths": [self.yaml], "urls": [],
                           "auto_update_enabled": False}}
        if server_port:
            config["listen_addr"] = "127.0.0.1:%d" % server_port
            config["server_url"] = "http://127.0.0.1:%d" % server_port
        config.update(extra_config or {})
        self.net = Net(config=config)
        if server_port:
            self.net.server.port = server_port
        self.key = self.net.authkey("a")

    def client(self, name, env=PLAIN, extra=()):
        return self.net.client(name, key=self.key, extra=["--port", "0"] + list(extra), env=env)

    def close(self, ok):
        errors = []
        try:
            self.net.close(check=ok)
        except AssertionError as e:
            errors.append(str(e))
        for r in self.relays:
            why = r.stop()
            if why and ok:
                errors.append("hwrelay: " + why)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise AssertionError("; ".join(errors))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(exc_type is None)
        return False


def stats(c):
    _, out, _ = c.cli("debug", "derp-stats", "--json")
    return json.loads(out)


def conn(st, region):
    for c in st["DERP"]["Connections"]:
        if c["RegionID"] == region:
            return c
    return None


def wait_derp_up(c, region, timeout=10, since=None):
    """Waits for c's connection to region to be up (and newer than since, if given)."""
    def up():
        cn = conn(stats(c), region)
        if cn and cn["State"] == "up" and (since is None or cn.get("ConnectedSince", "") > since):
            return cn
        return None
    try:
        return wait_until(up, timeout, "%s connected to derp-%d" % (c.hostname, region), interval=0.05)
    except AssertionError as e:
        raise AssertionError("%s; %s" % (e, c.log_tail()))


def wait_home(c, region, timeout=10):
    try:
        return wait_until(lambda: stats(c)["DERP"]["HomeRegion"] == region, timeout,
                          "%s homed in %d" % (c.hostname, region), interval=0.05)
    except AssertionError as e:
        raise AssertionError("%s; %s" % (e, c.log_tail()))


def wait_peer_home(c, peer, region, timeout=10):
    c.wait_for(lambda st: c.peers(st).get(peer, {}).get("HomeDERP") == region, timeout,
               "peer %s with HomeDERP %d" % (peer, region), interval=0.05)


def derp_send(c, peer, count, size=1200, ok=True):
    rc, out, err = run_hwclient("debug", "derp-send", peer, "--count", count, "--size", size, "--json",
                                "--statedir", c.dir, ok=ok, timeout=120)
    return json.loads(out) if out.strip() else {"error": err}


def received_from(c, sender):
    for key, v in stats(c)["Received"].items():
        if v["Peer"] == sender + DNS_SUFFIX:
            return v
    return None


def check_complete(c, sender, count):
    r = received_from(c, sender)
    check(r is not None, "%s received nothing from %s" % (c.hostname, sender))
    run = r["Run"]
    eq((run["Packets"], run["Total"], run["Lost"], run["Reordered"], run["FirstGap"], run["FirstReorder"]),
       (count, count, 0, 0, None, None), "%s's run from %s (packets, total, lost, reordered, gap, reorder)"
       % (c.hostname, sender))
    check(run["Complete"], "run not complete: %r" % run)


def verify(server_port, nodekey):
    req = urllib.request.Request("http://127.0.0.1:%d/verify" % server_port, method="POST",
                                 data=json.dumps({"NodePublic": nodekey, "Source": "127.0.0.1"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5 * SLOW) as r:
        return json.loads(r.read())


def log_number(what):
    """Numbers worth keeping, on stderr (tests/run.py shows it with HW_TEST_TIMES)."""
    if os.environ.get("HW_TEST_TIMES"):
        import sys
        sys.stderr.write("%s\n" % what)


# ---------------------------------------------------------------- cases

@case
def home_region_reported_to_peers():
    relay = Relay()
    with Setup([relay], [(900, "loc", "Loopback relay", relay)]) as s:
        a, b = s.client("a"), s.client("b")
        a.wait_running()
        b.wait_running()
        for c in (a, b):
            wait_home(c, 900)
            cn = wait_derp_up(c, 900)
            eq((cn["Home"], cn["Preferred"], cn["TLS"], cn["Node"]), (True, True, False, "900a"),
               "%s's home connection (home, preferred, tls, node)" % c.hostname)
            check(cn["PingRTTms"] > 0, "no DERP ping RTT: %r" % cn)
        # The server copies NetInfo.PreferredDERP into HomeDERP for the peers.
        wait_peer_home(a, "b", 900)
        wait_peer_home(b, "a", 900)
        peers = a.cli_netmap()["Peers"]
        eq([p.get("HomeDERP") for p in peers], [900], "HomeDERP in a's netmap")
        # DERPLatency went along in the Hostinfo the server keeps.
        hi = [p for p in peers][0].get("Hostinfo", {})
        ni = hi.get("NetInfo", {})
        eq(ni.get("PreferredDERP"), 900, "NetInfo.PreferredDERP in b's Hostinfo")
        check(ni.get("DERPLatency", {}).get("900-v4", 0) > 0, "no DERPLatency 900-v4: %r" % ni)
        eq(ni.get("WorkingUDP"), True, "WorkingUDP")
        contains(a.log_text(), "home DERP region is now 900", "a's log")


@case
def packets_both_ways_10000():
    relay = Relay()
    with Setup([relay], [(900, "loc", "Loopback relay", relay)]) as s:
        a, b = s.client("a"), s.client("b")
        for c, peer in ((a, "b"), (b, "a")):
            c.wait_running()
            wait_derp_up(c, 900)
            wait_peer_home(c, peer, 900)
        results = {}

        def send(c, peer):
            results[c.hostname] = derp_send(c, peer, 10000)
        threads = [threading.Thread(target=send, args=(a, "b")), threading.Thread(target=send, args=(b, "a"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, r in sorted(results.items()):
            eq((r.get("Sent"), r.get("Acked"), r.get("Problem")), (10000, 10000, None), "%s's derp-send" % name)
            log_number("derp-send %s: %.0f packets/s, %.1f Mbit/s" % (name, r["PacketsPerSecond"],
                                                                      r["MbitPerSecond"]))
        check_complete(b, "a", 10000)
        check_complete(a, "b", 10000)
        for c in (a, b):
            cn = conn(stats(c), 900)
            eq(cn["TxDrops"], 0, "%s dropped packets" % c.hostname)
        # Text forms of both commands.
        _, out, _ = run_hwclient("debug", "derp-send", "b", "--count", "50", "--statedir", a.dir)
        check(re.search(r"50 of 50 packets of 1200 bytes acknowledged in [0-9.]+ s", out), out)
        _, out, _ = b.cli("debug", "derp-stats")
        contains(out, "derp-900 (home): up, node 900a at 127.0.0.1:%d (plain HTTP)" % relay.port)
        contains(out, "a.headwater.net. nodekey:")
        contains(out, "50 of 50, lost 0, reordered 0, complete")
        # Unknown peers and bad sizes are refused with a reason.
        _, _, err = run_hwclient("debug", "derp-send", "nosuch", "--statedir", a.dir, ok=False)
        contains(err, "no peer \"nosuch\"")
        _, _, err = run_hwclient("debug", "derp-send", "b", "--size", "10", "--statedir", a.dir, ok=False)
        contains(err, "--size 10")


@case
def relay_restart_reconnects():
    relay = Relay()
    relays = [relay]
    with Setup(relays, [(900, "loc", "Loopback relay", relay)]) as s:
        a, b = s.client("a"), s.client("b")
        since = {}
        for c, peer in ((a, "b"), (b, "a")):
            c.wait_running()
            since[c.hostname] = wait_derp_up(c, 900)["ConnectedSince"]
            wait_peer_home(c, peer, 900)
        eq(derp_send(a, "b", 200).get("Acked"), 200, "acked before the restart")
        why = relay.stop()
        check(why is None, "hwrelay: %s" % why)
        for c in (a, b):
            wait_until(lambda: conn(stats(c), 900)["State"] != "up", 10, "%s noticing the relay went" % c.hostname,
                       interval=0.05)
        # `hwclient status` says so until it is back
        wait_until(lambda: any("not connected to home DERP region 900 (loc)" in h
                               for h in a.status()["Health"]), 10, "the DERP problem in a's health")
        time.sleep(1.5)  # a few failed attempts: the backoff grows
        again = Relay(port=relay.port, stun_port=relay.stun_port, workdir=relay.dir)
        relays[0] = again
        s.relays[0] = again
        # ConnectedSince has a one-second resolution: a restart within the same second is
        # told apart by the reconnect line in the log instead.
        for c in (a, b):
            wait_until(lambda: c.log_text().count("derp-900: connected to node 900a") >= 2, 15,
                       "%s reconnecting" % c.hostname, interval=0.05)
            wait_derp_up(c, 900)
            contains(c.log_text(), "reconnecting in", "%s's log" % c.hostname)
        eq([h for h in a.status()["Health"] if "DERP" in h], [], "a's health after the reconnect")
        r = derp_send(a, "b", 1000)
        eq((r.get("Acked"), r.get("Problem")), (1000, None), "a->b after the restart")
        r = derp_send(b, "a", 1000)
        eq((r.get("Acked"), r.get("Problem")), (1000, None), "b->a after the restart")
        check_complete(b, "a", 1000)
        check_complete(a, "b", 1000)


@case
def verify_client_url_admits_nodes_of_the_tailnet():
    server_port = hwtest.free_port()
    url = "http://127.0.0.1:%d/verify" % server_port
    relay = Relay("-verify-client-url", url)
    with Setup([relay], [(900, "loc", "Loopback relay", relay)], server_port=server_port) as s:
        a, b, c = s.client("a"), s.client("b"), s.client("c")
        for cl in (a, b, c):
            cl.wait_running()
            wait_derp_up(cl, 900)
        wait_peer_home(a, "b", 900)
        eq(derp_send(a, "b", 100).get("Acked"), 100, "acked between admitted nodes")
        # An expired node stops using its key for DERP at once (as tailscaled does) and
        # the server's admission endpoint refuses it from now on.
        ckey = c.status()["Self"]["PublicKey"]
        eq(verify(server_port, ckey), {"Allow": True}, "/verify for c before it expired")
        s.net.hwctl("nodes", "expire", "-i", c.node_id())
        wait_until(lambda: not stats(c)["DERP"]["Connections"], 10, "c closing its DERP connection",
                   interval=0.05)
        eq(verify(server_port, ckey), {"Allow": False}, "/verify for the expired c")
        # A deleted node keeps trying with its old key (it may come back); the relay asks
        # headwater on its next connection and refuses it.
        bkey = b.status()["Self"]["PublicKey"]
        s.net.hwctl("nodes", "delete", "-i", b.node_id(), "--force")
        wait_until(lambda: verify(server_port, bkey) == {"Allow": False}, 10, "/verify refusing b")
        why = relay.stop()  # a fresh relay has no cached answers, and everyone reconnects
        check(why is None, "hwrelay: %s" % why)
        again = Relay("-verify-client-url", url, port=relay.port, stun_port=relay.stun_port, workdir=relay.dir)
        s.relays[0] = again
        wait_until(lambda: a.log_text().count("derp-900: connected to node 900a") >= 2, 15, "a reconnecting",
                   interval=0.05)
        wait_until(lambda: "did not admit this node" in b.log_text(), 15, "b refused by the relay", interval=0.05)
        cn = conn(stats(b), 900)
        check(cn["State"] != "up", "b connected after its deletion: %r" % cn)
        check(again.wait_log("not allowed", 5), "relay log: " + again.log_text()[-800:])
        check("did not admit" not in a.log_text(), "a was refused: " + a.log_tail())


@case
def netcheck_reports_region_latency_and_public_address():
    relay = Relay()
    with Setup([relay], [(900, "loc", "Loopback relay", relay)]) as s:
        a = s.client("a")
        a.wait_running()
        wait_home(a, 900)
        port = stats(a)["DERP"]["UDPPort"]
        _, out, _ = a.cli("netcheck")
        contains(out, "\t* UDP: true")
        contains(out, "\t* IPv4: yes, 127.0.0.1:%d\n" % port)
        contains(out, "\t* Nearest DERP: Loopback relay")
        check(re.search(r"\t\t- loc: [0-9.]+(µs|ms) +\(Loopback relay\)", out), "no latency line: %r" % out)
        _, out, _ = a.cli("netcheck", "--format", "json")
        rep = json.loads(out)
        eq((rep["UDP"], rep["IPv4"], rep["PreferredDERP"], rep["GlobalV4"]),
           (True, True, 900, "127.0.0.1:%d" % port), "netcheck JSON (UDP, IPv4, PreferredDERP, GlobalV4)")
        check(rep["RegionLatency"]["900"] > 0 and rep["RegionV4Latency"]["900"] > 0, "latencies: %r" % rep)
        # Standalone, given the map the daemon holds (the netmap dump carries it).
        nm_path = os.path.join(s.tmp, "netmap.json")
        with open(nm_path, "w") as f:
            json.dump(a.cli_netmap(), f)
        _, out, _ = run_hwclient("netcheck", "--derp-map", nm_path)
        contains(out, "\t* UDP: true")
        check(re.search(r"\t\* IPv4: yes, 127\.0\.0\.1:\d+\n", out), out)
        check(re.search(r"\t\t- loc: [0-9.]+(µs|ms) ", out), out)
        _, _, err = run_hwclient("netcheck", "--derp-map", os.path.join(s.tmp, "nope.json"), ok=False)
        contains(err, "cannot read")


@case
def netcheck_falls_back_to_http_without_udp():
    relay = Relay(stun=False)
    silent = free_port()  # nothing answers STUN there
    with Setup([relay], [(900, "loc", "Loopback relay", relay, {"stun_port": silent})]) as s:
        a = s.client("a")
        a.wait_running()
        wait_home(a, 900, timeout=15)
        wait_derp_up(a, 900)
        _, out, _ = a.cli("netcheck")
        contains(out, "\t* UDP: false")
        contains(out, "\t* IPv4: (no addr found)")
        contains(out, "\t* Nearest DERP: Loopback relay")
        check(re.search(r"\t\t- loc: [0-9.]+(µs|ms) ", out), "no HTTP latency: %r" % out)
        contains(a.log_text(), "no UDP answer from any region: measuring over HTTP")


@case
def two_regions_peer_homed_elsewhere():
    r1, r2 = Relay(), Relay()
    regions = [(900, "one", "Relay one", r1), (901, "two", "Relay two", r2)]
    env = dict(PLAIN, HWCLIENT_DERP_IDLE_MS="1500")
    with Setup([r1, r2], regions) as s:
        a, b = s.client("a", env=env), s.client("b", env=env)
        # Both pick a home by latency, and each sees the other's.
        homes = {}
        for c in (a, b):
            c.wait_running()
            homes[c.hostname] = wait_until(lambda: stats(c)["DERP"]["HomeRegion"], 10, "a home region")
            check(homes[c.hostname] in (900, 901), "home %r" % homes[c.hostname])
        wait_peer_home(a, "b", homes["b"])
        wait_peer_home(b, "a", homes["a"])
        # Now apart, as `tailscale debug force-prefer-derp` does it.
        a.cli("debug", "force-prefer-derp", "900")
        b.cli("debug", "force-prefer-derp", "901")
        wait_home(a, 900)
        wait_home(b, 901)
        wait_derp_up(a, 900)
        wait_derp_up(b, 901)
        wait_peer_home(a, "b", 901)
        wait_peer_home(b, "a", 900)
        r = derp_send(a, "b", 1000)
        eq((r.get("Acked"), r.get("Problem")), (1000, None), "a (900) -> b (901)")
        check_complete(b, "a", 1000)
        # a went to b's region for it; b answered on the connection a's packets came by.
        st = stats(a)
        cn = conn(st, 901)
        check(cn is not None and not cn["Home"] and not cn["Preferred"], "a's connection to 901: %r" % cn)
        eq(conn(st, 900)["Home"], True, "a's home connection")
        st = stats(b)
        check(conn(st, 901)["TxPackets"] >= 1000 // 8, "b's acks did not go through 901: %r" % conn(st, 901))
        old = conn(st, 900)  # b's first home, possibly still in its grace minute
        check(old is None or old["TxPackets"] == 0, "b sent through 900: %r" % old)
        r = derp_send(b, "a", 1000)
        eq((r.get("Acked"), r.get("Problem")), (1000, None), "b (901) -> a (900)")
        check_complete(a, "b", 1000)
        # Idle connections to other regions close; the home one stays.
        for c, home, other in ((a, 900, 901), (b, 901, 900)):
            wait_until(lambda: conn(stats(c), other) is None, 10, "%s closing derp-%d" % (c.hostname, other),
                       interval=0.1)
            eq(conn(stats(c), home)["State"], "up", "%s's home connection" % c.hostname)
        # Back to latency: the forced region stays (sticky) unless another is clearly better.
        b.cli("debug", "force-prefer-derp", "0")
        eq(json.loads(b.cli("debug", "derp-stats", "--json")[1])["DERP"]["ForcePreferredDERP"], 0, "force off")


@case
def derp_map_change_keeps_or_moves_home():
    r1, r2 = Relay(), Relay()
    with Setup([r1, r2], [(900, "one", "Relay one", r1)]) as s:
        # headwater re-reads derp.paths every second from here on
        s.net.server.stop()
        s.net.server.settings["derp"].update({"auto_update_enabled": True, "update_frequency": "1s"})
        s.net.server.write_config()
        s.net.server.start()
        a, b = s.client("a"), s.client("b")
        for c in (a, b):
            c.wait_running()
            wait_derp_up(c, 900)
        wait_peer_home(a, "b", 900)
        # A second region appears: measured, but the home connection stays as it was.
        write_derp_yaml(s.yaml, [(900, "one", "Relay one", r1), (901, "two", "Relay two", r2)])
        wait_until(lambda: "901" in (stats(a)["DERP"].get("LastReport") or {}).get("RegionLatency", {}), 15,
                   "a measuring the new region", interval=0.1)
        eq(a.log_text().count("derp-900: connected"), 1, "a's connects to 900 (the map change kept it)")
        # The home region leaves the map: both move to the one that is left, and tell.
        write_derp_yaml(s.yaml, [(901, "two", "Relay two", r2)])
        for c, peer in ((a, "b"), (b, "a")):
            wait_home(c, 901, timeout=15)
            wait_derp_up(c, 901)
            wait_peer_home(c, peer, 901)
            check(conn(stats(c), 900) is None, "%s still connected to the removed region" % c.hostname)
            contains(c.log_text(), "its region left the DERP map", "%s's log" % c.hostname)
        r = derp_send(a, "b", 500)
        eq((r.get("Acked"), r.get("Problem")), (500, None), "a->b through the new home")


@case
def headwater_built_in_relay():
    # The relay inside headwater: /derp on its own HTTP port, STUN beside it, admission
    # answered in-process. Plain HTTP, as headwater listens without TLS here.
    stun = free_port()
    cfg = {"derp": {"server": {"enabled": True, "region_id": 999, "region_code": "hw",
                               "region_name": "Headwater", "stun_listen_addr": "127.0.0.1:%d" % stun,
                               "private_key_path": "derp_server_private.key", "verify_clients": True},
                    "urls": [], "paths": [], "auto_update_enabled": False}}
    net = Net(config=cfg)
    ok = False
    try:
        key = net.authkey("a")
        a = net.client("a", key=key, extra=["--port", "0"], env=PLAIN)
        b = net.client("b", key=key, extra=["--port", "0"], env=PLAIN)
        for c, peer in ((a, "b"), (b, "a")):
            c.wait_running()
            wait_home(c, 999)
            wait_derp_up(c, 999)
            wait_peer_home(c, peer, 999)
        r = derp_send(a, "b", 2000)
        eq((r.get("Acked"), r.get("Problem")), (2000, None), "a->b through headwater's relay")
        check_complete(b, "a", 2000)
        _, out, _ = a.cli("netcheck")
        contains(out, "\t* Nearest DERP: Headwater")
        contains(out, "\t* UDP: true")
        ok = True
    finally:
        net.close(check=ok)


def pinned_relay():
    relay = Relay("-hostname", "127.0.0.1", certmode="ipself")
    line = [l for l in relay.stdout_text().splitlines() if l.startswith("{")][0]
    return relay, json.loads(line)["CertName"]


@case
def tls_relay_with_pinned_certificate():
    relay, pin = pinned_relay()
    check(pin.startswith("sha256-raw:"), pin)
    with Setup([relay], [(900, "tls", "TLS relay", relay, {"certname": pin})]) as s:
        a, b = s.client("a", env={}), s.client("b", env={})
        for c, peer in ((a, "b"), (b, "a")):
            c.wait_running()
            cn = wait_derp_up(c, 900)
            eq(cn["TLS"], True, "TLS")
            wait_peer_home(c, peer, 900)
        r = derp_send(a, "b", 2000)
        eq((r.get("Acked"), r.get("Problem")), (2000, None), "a->b over TLS")
        check_complete(b, "a", 2000)


@case
def tls_relay_with_wrong_pin_refused():
    relay, pin = pinned_relay()
    wrong = "sha256-raw:" + "00" * 32
    with Setup([relay], [(900, "tls", "TLS relay", relay, {"certname": wrong})]) as s:
        a = s.client("a", env={})
        a.wait_running()
        wait_home(a, 900)
        wait_until(lambda: "is not the one pinned by the node's CertName" in a.log_text(), 10,
                   "the pin mismatch in a's log", interval=0.05)
        cn = conn(stats(a), 900)
        check(cn["State"] != "up", "connected despite the wrong pin: %r" % cn)
        check(pin[len("sha256-raw:"):] in a.log_text(), "the log names the certificate's hash: " + a.log_tail())


main()
