#!/usr/bin/env python3
"""Node lifecycle over time: a node that disconnects is shown offline to its peers after
the grace period, and an ephemeral node is removed once it has been offline for
ephemeral_node_inactivity_timeout (the smallest value the config accepts, 66 s: this
file takes a bit over a minute). node.expiry: the default key lifetime is applied at
registration (not to tagged nodes), and a key that runs out sends its node back to
login while its peers see it expired."""
import calendar
import time

from hwnet import Net, wait_until
from hwtest import SLOW, case, check, eq, main


@case
def offline_then_ephemeral_node_removed():
    with Net(config={"ephemeral_node_inactivity_timeout": "66s"}) as net:
        key = net.authkey("lab")
        eph_key = net.server.hwctl_json("preauthkeys", "create", "-n", "lab", "--ephemeral",
                                        "--reusable")["key"]
        keeper = net.client("keeper", key)
        eph = net.client("fleeting", eph_key)
        for c in (keeper, eph):
            c.wait_running(timeout=15)
        keeper.wait_for(lambda st: keeper.peers(st).get("fleeting", {}).get("Online"), timeout=10,
                        what="keeper sees the ephemeral node online")
        eq(net.nodes()["fleeting"]["ephemeral"], True, "node is ephemeral")

        eph.kill()
        # Offline after the 10 s grace period (plus the 1 s sweep), seen by the peer.
        start = time.monotonic()
        keeper.wait_for(lambda st: not keeper.peers(st)["fleeting"]["Online"], timeout=20 * SLOW,
                        what="keeper sees fleeting offline")
        offline_after = time.monotonic() - start
        check(offline_after >= 8, "marked offline after only %.1f s" % offline_after)
        check(not net.nodes()["fleeting"]["online"], "hwctl shows fleeting offline")

        # Removed after 66 s offline; the peer drops it from its netmap.
        keeper.wait_for(lambda st: "fleeting" not in keeper.peers(st), timeout=90 * SLOW,
                        what="the ephemeral node removed")
        gone_after = time.monotonic() - start
        check(gone_after >= 60, "removed after only %.1f s" % gone_after)
        check("fleeting" not in net.nodes(), "hwctl no longer lists it")
        check("keeper" in net.nodes(), "the regular node stays")
        contains_log = "ephemeral node" in net.server.log_text()
        check(contains_log, "the server logs the removal")


def unix(text):
    """hwctl's / the client's RFC 3339 time as unix seconds."""
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))


@case
def node_expiry_default_spares_tagged_nodes():
    with Net(config={"node": {"expiry": "2h"}}) as net:
        key = net.authkey("lab")
        tagged_key = net.server.hwctl_json("preauthkeys", "create", "-n", "lab", "--reusable",
                                           "--tags", "tag:server")["key"]
        laptop = net.client("laptop", key)
        server = net.client("server", tagged_key)
        for c in (laptop, server):
            c.wait_running(timeout=15)
        now = time.time()
        nodes = net.nodes()
        expiry = unix(nodes["laptop"]["expiry"])
        check(abs(expiry - (now + 7200)) < 120, "laptop expiry %s, want about now + 2h"
              % nodes["laptop"]["expiry"])
        eq(abs(unix(laptop.status()["Self"]["KeyExpiry"]) - expiry) <= 1, True,
           "the client got the same expiry")
        eq(nodes["server"]["tags"], ["tag:server"], "tagged node")
        eq(nodes["server"]["expiry"], None, "a tagged node never expires")
        check("KeyExpiry" not in server.status()["Self"], "no KeyExpiry on the tagged client")
        _, out, _ = net.hwctl("nodes", "list")
        header = [h.strip() for h in out.splitlines()[0].split(" | ")]
        for col in ("Connected", "Last seen", "Expiration", "Tags", "Routes"):
            check(col in header, "column %s in %r" % (col, header))


@case
def expired_key_sends_node_to_login():
    with Net(config={"node": {"expiry": "6s"}}) as net:
        key = net.authkey("lab")
        short = net.client("short", key)
        peer = net.client("peer", key)
        for c in (short, peer):
            c.wait_running(timeout=15)
        check(not net.nodes()["short"]["expired"], "not expired yet")
        # The key runs out: the node is told to log in again, its peer sees it expired.
        short.wait_for(lambda st: st["BackendState"] == "NeedsLogin", 15 * SLOW,
                       what="NeedsLogin after the key expired")
        peer.wait_for(lambda st: peer.peers(st).get("short", {}).get("Expired"), 5,
                      what="peer sees short expired")
        check(net.nodes()["short"]["expired"], "hwctl shows it expired")
        wait_until(lambda: "its key expired" in net.server.log_text(), 3,
                   "the server's log line for the expiry")


if __name__ == "__main__":
    main()
