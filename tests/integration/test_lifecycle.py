#!/usr/bin/env python3
"""Node lifecycle over time: a node that disconnects is shown offline to its peers after
the grace period, and an ephemeral node is removed once it has been offline for
ephemeral_node_inactivity_timeout (the smallest value the config accepts, 66 s: this
file takes a bit over a minute)."""
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


if __name__ == "__main__":
    main()
