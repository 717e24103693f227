#!/usr/bin/env python3
"""Subnet routers and exit nodes end to end: real hwclient daemons advertise routes
(`hwclient up --advertise-routes`), the admin enables them with hwctl, and a watching
client's status shows what its peers route (AllowedIPs, PrimaryRoutes, ExitNodeOption).

High availability: three routers of one prefix; exactly one is primary; when it is
killed (SIGKILL) another takes over within 10 s; the old one does not get the prefix back
when it returns, only when the new primary fails. Enabling and disabling reach peers
within 1 s. Takes about 40 s."""
import sys
import time

from hwnet import Net
from hwtest import SLOW, case, check, eq, main

SUBNET = "10.77.0.0/24"
FAILOVER_LIMIT = 10.0      # seconds from the primary's disconnect (the bound)
PROPAGATION_LIMIT = 1.0    # seconds from an hwctl change to the peers


def measured(what, seconds):
    print("# %s: %.0f ms" % (what, seconds * 1000), flush=True)
    sys.stderr.write("%s: %.0f ms\n" % (what, seconds * 1000))
    return seconds


def addresses_only(peer):
    return sorted(a.split("/")[0] for a in peer["AllowedIPs"]) == sorted(peer["TailscaleIPs"])


def serving(watcher, prefix=SUBNET):
    """Hostnames of the peers the watcher routes prefix through (AllowedIPs)."""
    return sorted(name for name, p in watcher.peers().items()
                  if prefix in (p.get("AllowedIPs") or []))


def primary_of(watcher, st, prefix=SUBNET):
    """The one peer with prefix in PrimaryRoutes and AllowedIPs, or None; fails when the
    watcher sees several."""
    found = [name for name, p in watcher.peers(st).items()
             if prefix in (p.get("PrimaryRoutes") or [])]
    check(len(found) <= 1, "several primaries for %s: %r" % (prefix, found))
    if found:
        check(prefix in watcher.peers(st)[found[0]]["AllowedIPs"],
              "the primary %s lacks %s in AllowedIPs" % (found[0], prefix))
    return found[0] if found else None


def wait_primary(watcher, name, timeout, what):
    start = time.monotonic()
    watcher.wait_for(lambda st: primary_of(watcher, st) == name, timeout=timeout, what=what)
    eq(serving(watcher), [name] if name else [], "peers whose AllowedIPs hold %s" % SUBNET)
    return time.monotonic() - start


def routes_table(net, prefix=SUBNET):
    """hwctl routes list -o json rows for prefix, by node name."""
    return {r["node"]: r for r in net.hwctl_json("routes", "list") if r["prefix"] == prefix}


def listed_primary(net):
    rows = routes_table(net)
    primaries = [name for name, r in rows.items() if r["primary"]]
    check(len(primaries) <= 1, "routes list shows several primaries: %r" % rows)
    return primaries[0] if primaries else None


def wait_listed_primary(net, name, timeout=2):
    deadline = time.monotonic() + timeout * SLOW
    while listed_primary(net) != name:
        check(time.monotonic() < deadline,
              "hwctl routes list: primary %r, want %r" % (listed_primary(net), name))
        time.sleep(0.02)


@case
def primary_failover_without_flapping():
    with Net() as net:
        key = net.authkey("lab")
        # One after another: the election prefers the lowest node id, so the ids must
        # follow the names.
        routers = []
        for i in (1, 2, 3):
            routers.append(net.client("router%d" % i, key, extra=["--advertise-routes", SUBNET]))
            routers[-1].wait_running(timeout=15)
        watcher = net.client("watcher", key)
        watcher.wait_running(timeout=15)
        ids = {c.hostname: c.node_id() for c in routers}
        check(ids["router1"] < ids["router2"] < ids["router3"], "ids in join order: %r" % ids)
        watcher.wait_for(lambda st: len(watcher.peers(st)) == 3, 5, what="three routers")

        # Advertised, not enabled: nobody routes the prefix.
        deadline = time.monotonic() + 5 * SLOW
        while len(routes_table(net)) < 3:
            check(time.monotonic() < deadline, "routes list: %r" % routes_table(net))
            time.sleep(0.05)
        rows = routes_table(net)
        eq({n: (r["advertised"], r["enabled"], r["primary"]) for n, r in rows.items()},
           {n: (True, False, False) for n in ids}, "advertised, not enabled")
        eq(serving(watcher), [], "nobody serves a route that is not enabled")

        # Enabled on all three: the oldest is primary, the others only their addresses.
        start = time.monotonic()
        for name, nid in ids.items():
            net.hwctl("routes", "enable", "-i", nid, "-r", SUBNET)
        wait_primary(watcher, "router1", 5, "router1 primary")
        took = measured("enable on 3 routers -> watcher sees the primary",
                        time.monotonic() - start)
        check(took < PROPAGATION_LIMIT * SLOW, "enable took %.0f ms" % (took * 1000))
        wait_listed_primary(net, "router1")
        for name in ("router2", "router3"):
            p = watcher.peers()[name]
            eq(addresses_only(p), True, "%s: only its addresses in AllowedIPs %r"
               % (name, p["AllowedIPs"]))
        _, out, _ = net.hwctl("routes", "list")
        lines = [l for l in out.splitlines() if SUBNET in l]
        eq(len(lines), 3, "three rows for %s in:\n%s" % (SUBNET, out))
        eq(sum(1 for l in lines if l.split()[-1] == "true"), 1, "one primary row in:\n%s" % out)

        # The primary dies: a backup takes over within 10 s of the disconnect.
        routers[0].kill()
        t_kill = time.monotonic()
        took = wait_primary(watcher, "router2", FAILOVER_LIMIT * SLOW, "router2 takes over")
        measured("primary killed -> backup primary at the watcher", took)
        check(took < FAILOVER_LIMIT * SLOW, "failover took %.1f s" % took)
        wait_listed_primary(net, "router2")
        check(time.monotonic() - t_kill < FAILOVER_LIMIT * SLOW + 2, "routes list in time")

        # The old primary returns: no flapping.
        routers[0].start()
        routers[0].wait_running(timeout=15)
        watcher.wait_for(lambda st: watcher.peers(st)["router1"]["Online"], 15,
                         what="router1 back online")
        time.sleep(2)
        eq(primary_of(watcher, watcher.status()), "router2", "primary after router1 returned")
        eq(listed_primary(net), "router2", "routes list after router1 returned")

        # The new primary dies: the lowest id that is up (router1) takes over.
        routers[1].kill()
        took = wait_primary(watcher, "router1", FAILOVER_LIMIT * SLOW, "router1 takes over again")
        measured("second failover", took)
        wait_listed_primary(net, "router1")

        # Disabling the primary's route re-elects at once (within 1 s at the peers).
        start = time.monotonic()
        net.hwctl("routes", "disable", "-i", ids["router1"], "-r", SUBNET)
        took = measured("disable the primary's route -> router3 primary",
                        wait_primary(watcher, "router3", 5, "router3 primary"))
        check(took < PROPAGATION_LIMIT * SLOW, "disable took %.0f ms" % (took * 1000))
        eq(routes_table(net)["router1"]["enabled"], False, "router1's route disabled")

        # Deleting the primary node re-elects too; with nobody left, nobody serves it.
        net.hwctl("nodes", "delete", "-i", ids["router3"], "--force")
        wait_primary(watcher, None, 5, "no primary once router3 is gone")
        eq(listed_primary(net), None, "routes list without a primary")
        check("primary router" in net.server.log_text(), "elections are logged")


@case
def sole_router_back_within_grace_serves_again():
    """A lone router whose stream ends loses its prefix after 5 s, but is still online
    for peers (10 s grace): when it reconnects in between it must be elected again."""
    with Net() as net:
        key = net.authkey("lab")
        router = net.client("router", key, extra=["--advertise-routes", SUBNET])
        watcher = net.client("watcher", key)
        for c in (router, watcher):
            c.wait_running(timeout=15)
        net.hwctl("routes", "enable", "-i", router.node_id(), "-r", SUBNET)
        wait_primary(watcher, "router", 5, "router primary")
        router.kill()
        wait_primary(watcher, None, FAILOVER_LIMIT * SLOW, "no primary while router is away")
        check(watcher.peers()["router"]["Online"], "still online for peers (the 10 s grace)")
        router.start()
        wait_primary(watcher, "router", 10, "router primary again after reconnecting")
        eq(listed_primary(net), "router", "routes list")


@case
def exit_node_offered_to_peers():
    with Net() as net:
        key = net.authkey("lab")
        exit_node = net.client("exit", key, extra=["--advertise-routes", "0.0.0.0/0,::/0"])
        router = net.client("router", key, extra=["--advertise-routes", "10.88.0.0/16"])
        user = net.client("user", key)
        for c in (exit_node, router, user):
            c.wait_running(timeout=15)
        eid = exit_node.node_id()
        deadline = time.monotonic() + 5 * SLOW
        while len([r for r in net.hwctl_json("routes", "list") if r["node_id"] == eid]) < 2:
            check(time.monotonic() < deadline, "exit routes not listed")
            time.sleep(0.05)
        user.wait_for(lambda st: len(user.peers(st)) == 2, 5, what="two peers")
        check(not user.peers()["exit"]["ExitNodeOption"], "not an exit node before approval")

        # Enabling one of the pair enables both (Headscale's rule); peers see both in
        # AllowedIPs and nothing in PrimaryRoutes: exit routes are not elected.
        start = time.monotonic()
        net.hwctl("routes", "enable", "-i", eid, "-r", "0.0.0.0/0")
        st = user.wait_for(lambda s: user.peers(s)["exit"]["ExitNodeOption"], 5,
                           what="exit node offered")
        measured("enable exit node -> peer sees ExitNodeOption", time.monotonic() - start)
        p = user.peers(st)["exit"]
        check("0.0.0.0/0" in p["AllowedIPs"] and "::/0" in p["AllowedIPs"], "AllowedIPs %r"
              % p["AllowedIPs"])
        eq(p.get("PrimaryRoutes"), None, "exit routes are not primary routes")
        rows = {r["prefix"]: r for r in net.hwctl_json("routes", "list", "-i", eid)}
        eq({k: (r["enabled"], r["primary"]) for k, r in rows.items()},
           {"0.0.0.0/0": (True, False), "::/0": (True, False)}, "exit routes in routes list")
        _, out, _ = net.hwctl("routes", "list", "-i", eid)
        eq([l.split()[-1] for l in out.splitlines()[1:]], ["-", "-"], "Primary column of exit routes")

        # hwctl nodes list shows what each node serves.
        nodes = net.nodes()
        eq(sorted(nodes["exit"]["routes"]["enabled"]), ["0.0.0.0/0", "::/0"], "exit node routes")
        eq(nodes["exit"]["routes"]["primary"], [], "no primary exit routes")
        net.hwctl("routes", "enable", "-i", router.node_id(), "-r", "10.88.0.0/16")
        user.wait_for(lambda s: "10.88.0.0/16" in (user.peers(s)["router"].get("PrimaryRoutes")
                                                   or []), 5, what="subnet route")
        eq(net.nodes()["router"]["routes"]["primary"], ["10.88.0.0/16"], "router's primary")
        _, out, _ = net.hwctl("nodes", "list")
        header = out.splitlines()[0]
        check("Routes" in header, "Routes column in %r" % header)
        row = [l for l in out.splitlines() if " exit " in l]
        check(row and "0.0.0.0/0" in row[0], "exit row %r" % row)

        # Disabling takes the exit node away from the peers.
        start = time.monotonic()
        net.hwctl("routes", "disable", "-i", eid, "-r", "::/0")
        user.wait_for(lambda s: not user.peers(s)["exit"]["ExitNodeOption"], 5,
                      what="exit node withdrawn")
        took = measured("disable exit node -> peer", time.monotonic() - start)
        check(took < PROPAGATION_LIMIT * SLOW, "disable took %.0f ms" % (took * 1000))
        p = user.peers()["exit"]
        eq(addresses_only(p), True, "only addresses after disable: %r" % p["AllowedIPs"])


if __name__ == "__main__":
    main()
