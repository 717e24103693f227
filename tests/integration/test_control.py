"""The control protocol end to end: a real headwater and several `hwclient up` daemons on
127.0.0.1, each with its own state dir. What is asserted is what a user sees: `hwclient
status` / `hwclient netmap -o json` on the clients and `hwctl nodes list` on the server.
Changes made with hwctl must reach every client within 1 s (measured and printed).

Cases marked SERVER BUG in their failure message fail because headwater does something
wrong; they are kept failing on purpose until the server is fixed."""
import base64
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time

import hwtest
from hwnet import HWCLIENT, Net, run_hwclient, wait_until
from hwtest import BUILD, SLOW, case, check, contains, eq, main

V4 = ipaddress.ip_network("100.64.0.0/10")
V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")
HWPROBE = os.path.join(BUILD, "tools", "hwprobe")
PROPAGATION_LIMIT = 1.0  # seconds, for every change made with hwctl


def measured(what, seconds):
    """Prints a measurement (visible when the file runs on its own) and returns it."""
    print("# %s: %.0f ms" % (what, seconds * 1000), flush=True)
    sys.stderr.write("%s: %.0f ms\n" % (what, seconds * 1000))
    return seconds


def within(seconds, what):
    check(seconds < PROPAGATION_LIMIT,
          "%s took %.0f ms, more than the %.0f ms allowed" % (what, seconds * 1000,
                                                              PROPAGATION_LIMIT * 1000))


def tailnet_ips(ips):
    """(v4, v6) of a list of address strings; both must be in the tailnet ranges."""
    v4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
    v6 = [ip for ip in ips if ipaddress.ip_address(ip).version == 6]
    eq(len(v4), 1, "IPv4 addresses in %r" % ips)
    eq(len(v6), 1, "IPv6 addresses in %r" % ips)
    check(ipaddress.ip_address(v4[0]) in V4, "%s not in %s" % (v4[0], V4))
    check(ipaddress.ip_address(v6[0]) in V6, "%s not in %s" % (v6[0], V6))
    return v4[0], v6[0]


def peer_names(client):
    return sorted(client.peers().keys())


def wait_peers(client, names, timeout=5):
    want = sorted(names)
    return client.wait_for(lambda st: sorted(p["HostName"] for p in st["Peer"].values()) == want,
                           timeout, "peers %s" % want)


def node_expired(node):
    """A netmap node (tailcfg.Node JSON) whose key expired by now."""
    if node is None:
        return False
    if node.get("Expired"):
        return True
    t = node.get("KeyExpiry")
    if not t or t.startswith("0001-"):
        return False
    t = re.sub(r"\.\d+", "", t).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(t).timestamp() <= time.time()


def netmap_peer(nm, node_id):
    for p in nm.get("Peers") or []:
        if p["ID"] == node_id:
            return p
    return None


def wait_all(clients, pred, timeout, what):
    """Polls every client's netmap until pred(netmap) holds on all; returns the seconds
    from the call until the last one did."""
    start = time.monotonic()
    pending = list(clients)
    deadline = start + timeout * SLOW
    while pending:
        for c in list(pending):
            try:
                if pred(c.call("netmap")):
                    pending.remove(c)
            except (OSError, ValueError, KeyError):
                pass
        if not pending:
            break
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s on %s; %s"
                                 % (timeout * SLOW, what, [c.hostname for c in pending],
                                    pending[0].log_tail()))
        time.sleep(0.003)
    return time.monotonic() - start


def start_tailnet(net, namespace, names, key=None):
    key = key or net.authkey(namespace)
    clients = [net.client(n, key=key) for n in names]
    for c in clients:
        c.wait_running()
    for c in clients:
        wait_peers(c, [x.hostname for x in clients if x is not c])
    return clients


def status_table(client):
    """`hwclient status` rows as lists of cells (columns are separated by 2+ spaces)."""
    _, out, _ = client.cli("status")
    return [re.split(r"\s{2,}", l.strip()) for l in out.splitlines() if l.strip()]


def connects(client):
    return client.log_text().count("control: connected to")


# ---------------------------------------------------------------- CLI basics

@case
def cli_version_help_and_no_daemon():
    _, out, _ = run_hwclient("--version")
    check(out.startswith("hwclient "), "version line: %r" % out)
    _, out, _ = run_hwclient("--help")
    contains(out, "hwclient up --login-server URL")
    rc, _, err = run_hwclient("frobnicate", ok=False)
    eq(rc, 2, "exit status of an unknown command")
    contains(err, "unknown command frobnicate")
    d = hwtest._scratch_dir()
    for cmd in (["status"], ["netmap", "-o", "json"], ["logout"], ["down"]):
        rc, out, err = run_hwclient(*cmd, "--statedir", d, ok=False)
        eq(err.strip(), "hwclient: no daemon running in %s: start it with `hwclient up "
                        "--login-server URL --statedir %s`" % (d, d), "stderr of %s" % cmd)
    rc, _, err = run_hwclient("up", "--statedir", d, ok=False)
    eq(rc, 2, "up without --login-server")
    contains(err, "--login-server URL is required")
    rc, _, err = run_hwclient("up", "--login-server", "http://127.0.0.1:1",
                              "--advertise-routes", "10.1.2.3/16", "--statedir", d, ok=False)
    contains(err, "10.1.2.3/16 has non-address bits set; expected 10.1.0.0/16")
    rc, _, err = run_hwclient("up", "--login-server", "ftp://x", "--statedir", d, ok=False)
    contains(err, "expected a URL starting with http://")


@case
def state_dir_files_and_second_daemon_refused():
    with Net() as net:
        key = net.authkey("a")
        c = net.client("box1", key=key)
        c.wait_running()
        for name in ("machine.key", "node.key", "hwclient.sock"):
            mode = stat.S_IMODE(os.stat(os.path.join(c.dir, name)).st_mode)
            eq(oct(mode), oct(0o600), "mode of %s" % name)
        eq(oct(stat.S_IMODE(os.stat(c.dir).st_mode)), oct(0o700), "state dir mode")
        with open(os.path.join(c.dir, "node.key")) as f:
            check(f.read().startswith("privkey:"), "node.key holds a private key")
        rc, _, err = run_hwclient("up", "--login-server", c.login_server, "--statedir", c.dir,
                                  "--tun", "none", ok=False)
        eq(rc, 1, "exit status of a second daemon")
        contains(err, "a daemon is already running in %s (pid %d)" % (c.dir, c.proc.pid))
        c.wait_running()  # the first one is untouched


# ---------------------------------------------------------------- registration

@case
def authkey_registration_three_clients():
    with Net() as net:
        a = start_tailnet(net, "a", ["box1", "box2", "box3"])
        # a peer is announced when it registers and goes online when its map stream opens
        for c in a:
            c.wait_for(lambda st: all(p["Online"] for p in st["Peer"].values()), 2,
                       "every peer online")
        own = {}
        for c in a:
            st = c.cli_status_json()
            eq(st["BackendState"], "Running", "state of %s" % c.hostname)
            own[c.hostname] = tailnet_ips(st["TailscaleIPs"])
        eq(len(set(own.values())), 3, "distinct addresses %r" % own)
        for c in a:
            peers = c.peers(c.cli_status_json())
            eq(sorted(peers), sorted(x.hostname for x in a if x is not c),
               "peers of %s" % c.hostname)
            for name, p in peers.items():
                eq(tailnet_ips(p["TailscaleIPs"]), own[name], "%s's view of %s" % (c.hostname, name))
                check(p["Online"], "%s sees %s offline" % (c.hostname, name))
                check(not p["Expired"], "%s sees %s expired" % (c.hostname, name))
        # what `hwclient status` prints: self first, then the peers; IP, name, owner, OS, status
        rows = status_table(a[0])
        eq(len(rows), 3, "status rows %r" % rows)
        eq(rows[0], [own["box1"][0], "box1", "a", "linux", "-"], "self row")
        eq(sorted(r[1] for r in rows[1:]), ["box2", "box3"], "peer rows")
        for r in rows[1:]:
            eq(r, [own[r[1]][0], r[1], "a", "linux", "-"], "peer row")
        # the netmap dump carries both addresses of every peer
        nm = a[0].cli_netmap()
        check(nm["Name"].startswith("box1."), "netmap Name %r" % nm["Name"])
        got = sorted((p["Hostinfo"]["Hostname"], sorted(x.split("/")[0] for x in p["Addresses"]))
                     for p in nm["Peers"])
        eq(got, sorted((n, sorted(own[n])) for n in ("box2", "box3")), "netmap peers")
        # the server's view
        nodes = net.nodes()
        eq(sorted(nodes), ["box1", "box2", "box3"], "hwctl nodes list")
        for name, n in nodes.items():
            eq(sorted(n["ip_addresses"]), sorted(own[name]), "addresses of %s in hwctl" % name)
            eq(n["namespace"], "a", "namespace of %s" % name)
            check(not n["expired"], "%s expired in hwctl" % name)


@case
def nodes_list_shows_connected_clients_online():
    with Net() as net:
        start_tailnet(net, "a", ["box1", "box2", "box3"])
        try:
            wait_until(lambda: all(n["online"] for n in net.nodes().values()), 2,
                       "every node online in hwctl nodes list")
        except AssertionError:
            rows = {k: v["online"] for k, v in net.nodes().items()}
            raise AssertionError(
                "SERVER BUG: `hwctl nodes list -o json` reports online=%r for three nodes whose "
                "map streams are open (the clients show each other online); api/admin_nodes.c "
                "node_json() hard-codes \"online\": false instead of asking the control layer "
                "which nodes have a live map stream" % rows)


@case
def interactive_registration():
    with Net() as net:
        net.namespace("a")
        key = net.authkey("a")
        other = net.client("other", key=key)
        other.wait_running()
        c = net.client("laptop")
        url = c.wait_auth_url()
        check(url.startswith("http://127.0.0.1:%d/register/" % net.server.port), "AuthURL %r" % url)
        st = c.wait_for(lambda st: st["AuthURL"] == url, 5, "AuthURL in status")
        eq(st["BackendState"], "NeedsLogin", "state while waiting")
        rc, out, _ = c.cli("status", ok=False)
        eq(rc, 1, "exit status of status while logged out")
        eq(out, "Logged out.\nLog in at: %s\n" % url, "status text")
        check("laptop" not in net.nodes(), "no node before the admin registers it")
        reg_id = url.rsplit("/", 1)[1]
        start = time.monotonic()
        net.hwctl("nodes", "register", "-n", "a", "--key", reg_id)
        c.wait_running(5)
        measured("interactive login: hwctl nodes register -> client Running", time.monotonic() - start)
        contains(c.log_text(), "Success.")
        ips = tailnet_ips(c.ips())
        eq(sorted(net.nodes()["laptop"]["ip_addresses"]), sorted(ips), "laptop's addresses in hwctl")
        wait_peers(c, ["other"])
        wait_peers(other, ["laptop"])


@case
def namespaces_isolate():
    with Net() as net:
        a = start_tailnet(net, "a", ["a1", "a2"])
        b = start_tailnet(net, "b", ["b1", "b2"])
        time.sleep(0.3)  # anything leaking across would have arrived by now
        for c in a:
            eq(peer_names(c), sorted(x.hostname for x in a if x is not c), "peers of %s" % c.hostname)
            eq(sorted(p["Hostinfo"]["Hostname"] for p in c.cli_netmap()["Peers"]),
               sorted(x.hostname for x in a if x is not c), "netmap of %s" % c.hostname)
        for c in b:
            eq(peer_names(c), sorted(x.hostname for x in b if x is not c), "peers of %s" % c.hostname)
        eq(sorted(net.nodes("a")), ["a1", "a2"], "hwctl nodes list -n a")
        eq(sorted(net.nodes("b")), ["b1", "b2"], "hwctl nodes list -n b")
        # a lone node in a third namespace sees nobody
        lone = net.client("c1", key=net.authkey("c"))
        lone.wait_running()
        time.sleep(0.2)
        eq(peer_names(lone), [], "peers of the only node of namespace c")
        eq(lone.cli_netmap()["Peers"], [], "netmap peers of c1")


@case
def fourth_client_reaches_peers_within_1s():
    with Net() as net:
        key = net.authkey("a")
        a = start_tailnet(net, "a", ["box1", "box2", "box3"], key=key)
        start = time.monotonic()
        d = net.client("box4", key=key)

        def has_box4(nm):
            return any(p["Hostinfo"]["Hostname"] == "box4" for p in nm["Peers"])
        wait_all(a, has_box4, 5, "box4 in the netmap")
        total = measured("4th client: `hwclient up` started -> in all 3 peers' netmaps",
                         time.monotonic() - start)
        d.wait_running()
        within(total, "a new client reaching its peers")
        v4, v6 = tailnet_ips(d.ips())
        for c in a:
            p = c.peers()["box4"]
            eq(tailnet_ips(p["TailscaleIPs"]), (v4, v6), "%s's view of box4" % c.hostname)
        wait_peers(d, ["box1", "box2", "box3"])


# ---------------------------------------------------------------- admin changes

@case
def rename_reaches_every_client_within_1s():
    with Net() as net:
        a = start_tailnet(net, "a", ["box1", "box2", "box3"])
        target = a[1]
        nid = target.node_id()
        start = time.monotonic()
        net.hwctl("nodes", "rename", "-i", nid, "renamed")

        def renamed(nm):
            if nm["SelfNode"]["ID"] == nid:
                return nm["Name"].startswith("renamed.")
            p = netmap_peer(nm, nid)
            return p is not None and p["Name"].startswith("renamed.")
        wait_all(a, renamed, 5, "the new name")
        within(measured("rename: hwctl -> all 3 clients", time.monotonic() - start), "a rename")
        rows = status_table(a[0])
        check(any(r[1] == "renamed" for r in rows), "renamed peer in `hwclient status`: %r" % rows)
        eq(net.nodes()["renamed"]["id"], nid, "hwctl shows the new name")


@case
def expire_reaches_every_client_within_1s():
    with Net() as net:
        a = start_tailnet(net, "a", ["box1", "box2", "box3"])
        target = a[2]
        nid = target.node_id()
        start = time.monotonic()
        net.hwctl("nodes", "expire", "-i", nid)
        target.wait_for(lambda st: st["BackendState"] == "NeedsLogin", 5, "NeedsLogin")
        t_self = time.monotonic() - start
        others = a[:2]
        wait_all(others, lambda nm: node_expired(netmap_peer(nm, nid)), 5, "box3 expired")
        for c in others:
            eq(c.peers()["box3"]["Expired"], True, "box3's Expired in %s's status" % c.hostname)
        t_all = time.monotonic() - start
        measured("expire: hwctl -> node NeedsLogin", t_self)
        within(measured("expire: hwctl -> node and both peers", t_all), "an expiry")
        st = target.cli_status_json()
        eq(st["BackendState"], "NeedsLogin", "state of the expired node")
        check(st["Self"]["Expired"], "the node shows its own key expired")
        rc, out, _ = target.cli("status", ok=False)
        eq(rc, 1, "status exit code of an expired node")
        check(out.startswith("Logged out.\nThe node key expired at "), "status text %r" % out)
        rows = status_table(a[0])
        row = [r for r in rows if r[1] == "box3"]
        eq(len(row), 1, "box3 row in %r" % rows)
        check(row[0][4].endswith("expired"), "status column of the expired peer: %r" % row[0])
        check(net.nodes()["box3"]["expired"], "hwctl shows box3 expired")


@case
def delete_reaches_every_client_within_1s():
    with Net() as net:
        a = start_tailnet(net, "a", ["box1", "box2", "box3"])
        target = a[1]
        nid = target.node_id()
        start = time.monotonic()
        net.hwctl("nodes", "delete", "-i", nid, "--force")
        wait_all([a[0], a[2]], lambda nm: netmap_peer(nm, nid) is None, 5, "box2 gone")
        within(measured("delete: hwctl -> both peers dropped it", time.monotonic() - start),
               "a deletion")
        eq(peer_names(a[0]), ["box3"], "box1's peers after the deletion")
        eq(sorted(net.nodes()), ["box1", "box3"], "hwctl nodes list")
        # The deleted node is told "node not found" and falls back to an interactive login
        # rather than re-registering itself with the auth key it started with.
        st = target.wait_for(lambda st: st["AuthURL"] != "", 10, "an AuthURL after deletion")
        eq(st["BackendState"], "NeedsLogin", "state of the deleted node")
        time.sleep(0.3)
        eq(sorted(net.nodes()), ["box1", "box3"], "the deleted node stays deleted")


@case
def move_to_other_namespace():
    with Net() as net:
        a = start_tailnet(net, "a", ["a1", "a2", "a3"])
        b = start_tailnet(net, "b", ["b1"])
        mover = a[2]
        nid = mover.node_id()
        ips = mover.ips()
        start = time.monotonic()
        net.hwctl("nodes", "move", "-i", nid, "-n", "b")
        wait_all(a[:2], lambda nm: netmap_peer(nm, nid) is None, 5, "a3 gone from a")
        wait_all(b, lambda nm: netmap_peer(nm, nid) is not None, 5, "a3 in b")
        measured("move: hwctl -> gone from a's netmaps and in b's", time.monotonic() - start)
        wait_peers(mover, ["b1"])
        eq(peer_names(a[0]), ["a2"], "a1's peers")
        eq(peer_names(b[0]), ["a3"], "b1's peers")
        eq(sorted(mover.ips()), sorted(ips), "the moved node keeps its addresses")
        eq(net.nodes()["a3"]["namespace"], "b", "hwctl shows the new namespace")
        rows = status_table(b[0])
        check(any(r[1] == "a3" and r[2] == "b" for r in rows),
              "b1 shows a3 owned by b: %r" % rows)


@case
def advertised_routes_reach_the_server():
    with Net() as net:
        key = net.authkey("a")
        c = net.client("router", key=key, extra=["--advertise-routes", "10.20.0.0/16,192.168.7.0/24"])
        c.wait_running()
        nid = c.node_id()

        def advertised():
            n = net.nodes()["router"]
            return sorted(n["routes"]["advertised"]) == ["10.20.0.0/16", "192.168.7.0/24"]
        try:
            wait_until(advertised, 3, "the advertised routes in hwctl nodes list")
        except AssertionError:
            hi = net.server.sqlite("SELECT hostinfo FROM nodes WHERE id = ?", (nid,))
            raise AssertionError(
                "SERVER BUG: a node that registers with Hostinfo.RoutableIPs = [10.20.0.0/16, "
                "192.168.7.0/24] (stored hostinfo: %s) has no advertised routes in `hwctl nodes "
                "list` / `hwctl routes list`: server/control.c stores the routes only when a map "
                "request's Hostinfo differs from the stored one, and register_with_key() already "
                "stored this Hostinfo without its routes" % (hi[0][0] if hi else None))
        _, out, _ = net.hwctl("routes", "list", "-i", nid)
        contains(out, "10.20.0.0/16")


# ---------------------------------------------------------------- restarts

def restart_case(kill):
    with Net() as net:
        a = start_tailnet(net, "a", ["box1", "box2"])
        before = {c.hostname: (c.node_id(), sorted(c.ips())) for c in a}
        rows_before = net.node_rows()
        conn_before = {c.hostname: connects(c) for c in a}
        if kill:
            net.server.kill9()
        else:
            eq(net.server.stop(), 0, "headwater's exit status after SIGTERM")
        for c in a:
            c.wait_for(lambda st: not st["ControlConnected"], 5, "losing the server")
        net.server.start()
        start = time.monotonic()
        for c in a:
            c.wait_for(lambda st, c=c: st["ControlConnected"] and connects(c) > conn_before[c.hostname],
                       20, "reconnecting on its own")
        measured("reconnect after %s restart" % ("SIGKILL" if kill else "SIGTERM"),
                 time.monotonic() - start)
        for c in a:
            eq((c.node_id(), sorted(c.ips())), before[c.hostname], "%s's node after the restart"
               % c.hostname)
            eq(c.status()["BackendState"], "Running", "state of %s" % c.hostname)
        wait_peers(a[0], ["box2"])
        wait_peers(a[1], ["box1"])
        eq([(n["id"], n["name"], n["ip_addresses"]) for n in net.node_rows()],
           [(n["id"], n["name"], n["ip_addresses"]) for n in rows_before], "hwctl nodes list")
        # the new streams carry changes: a third node shows up on both
        c3 = net.client("box3", key=net.authkey("a"))
        c3.wait_running()
        wait_all(a, lambda nm: any(p["Hostinfo"]["Hostname"] == "box3" for p in nm["Peers"]), 2,
                 "box3 after the restart")


@case
def server_restart_sigterm_clients_reconnect():
    restart_case(kill=False)


@case
def server_restart_sigkill_clients_reconnect():
    restart_case(kill=True)


@case
def silent_server_trips_the_map_watchdog():
    with Net() as net:
        key = net.authkey("a")
        c = net.client("watched", key=key, env={"HWCLIENT_MAP_WATCHDOG_MS": "1500"})
        c.wait_running()
        before = connects(c)
        pid = net.server.proc.pid
        os.kill(pid, signal.SIGSTOP)  # sockets stay open, nothing comes: only the watchdog sees it
        try:
            wait_until(lambda: "map stream: no message for 1.5 s" in c.log_text(), 5,
                       "the watchdog firing")
        finally:
            os.kill(pid, signal.SIGCONT)
        c.wait_for(lambda st: st["ControlConnected"] and connects(c) > before, 20,
                   "reconnecting after the watchdog")
        eq(c.status()["BackendState"], "Running", "state after the reconnect")


@case
def client_restart_keeps_its_node():
    with Net() as net:
        key = net.authkey("a")
        a = start_tailnet(net, "a", ["box1", "box2"], key=key)
        nid, ips = a[0].node_id(), sorted(a[0].ips())
        eq(a[0].terminate(), 0, "exit status after SIGTERM")
        contains(a[0].log_text(), "stopping: Terminated")
        a[0].key = None  # the stored node key is enough: no auth key, no AuthURL
        a[0].start()
        a[0].wait_running()
        eq((a[0].node_id(), sorted(a[0].ips())), (nid, ips), "node after the client's restart")
        check("To authenticate" not in a[0].log_text(), "no interactive login after a restart")
        eq(sorted(net.nodes()), ["box1", "box2"], "no extra node on the server")
        wait_peers(a[1], ["box1"])


# ---------------------------------------------------------------- logout and keys

@case
def logout_expires_the_node():
    with Net() as net:
        a = start_tailnet(net, "a", ["box1", "box2"])
        nid = a[0].node_id()
        _, out, _ = a[0].cli("logout")
        eq(out, "Logged out.\n", "logout output")
        st = a[0].cli_status_json()
        eq(st["BackendState"], "NeedsLogin", "state after logout")
        eq(st["Self"], None, "no self node after logout")
        rc, out, _ = a[0].cli("status", ok=False)
        eq((rc, out), (1, "Logged out.\n"), "status after logout")
        check(not os.path.exists(os.path.join(a[0].dir, "node.key")), "node.key removed")
        check(os.path.exists(os.path.join(a[0].dir, "machine.key")), "machine.key kept")
        rows = {n["id"]: n for n in net.node_rows()}
        check(rows[nid]["expired"], "hwctl shows the logged-out node expired: %r" % rows[nid])
        a[1].wait_for(lambda st: st["Peer"] and all(p["Expired"] for p in st["Peer"].values()), 2,
                      "box1 expired in box2's view")
        _, out, _ = a[0].cli("logout")
        contains(out, "already logged out")
        a[0].cli("netmap", ok=False)


@case
def ephemeral_node_is_removed_at_logout():
    with Net() as net:
        key = net.authkey("a", extra=["--ephemeral"])
        c = net.client("temp", key=key, extra=["--ephemeral"])
        c.wait_running()
        other = net.client("stays", key=net.authkey("a"))
        wait_peers(other, ["temp"])
        check(net.nodes()["temp"]["ephemeral"], "hwctl shows the node ephemeral")
        c.cli("logout")
        wait_until(lambda: "temp" not in net.nodes(), 2, "the ephemeral node removed")
        wait_peers(other, [], timeout=2)
        eq(c.status()["BackendState"], "NeedsLogin", "state after logout")


@case
def single_use_key_reused_is_refused():
    with Net() as net:
        key = net.authkey("a", reusable=False)
        first = net.client("first", key=key)
        first.wait_running()
        second = net.client("second", key=key)
        rc = second.wait_exit(10)
        eq(rc, 1, "exit status of a refused login")
        line = [l for l in second.log_text().splitlines() if l.startswith("hwclient: ")]
        eq(len(line), 1, "one error line in %r" % second.log_text())
        check(line[0].startswith("hwclient: login failed: "), "error line %r" % line[0])
        contains(line[0], "already used")
        eq(sorted(net.nodes()), ["first"], "nodes after the refusal")


def register_at_once(port, key, count):
    """count hwprobe processes, each a new machine with its own node key, register with
    key at the same moment (the server stores registrations of one loop pass in one
    transaction). Returns the parsed answers."""
    procs = []
    for i in range(count):
        body = json.dumps({"Version": 133, "NodeKey": "nodekey:" + os.urandom(32).hex(),
                           "Auth": {"AuthKey": key}, "Hostinfo": {"Hostname": "racer-%d" % i}})
        procs.append(subprocess.Popen([HWPROBE, "http://127.0.0.1:%d" % port, "post", "/machine/register", body],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    answers = []
    for p in procs:
        out, err = p.communicate(timeout=30 * SLOW)
        hwtest._check_sanitizer(err, "hwprobe")
        status, _, body = out.partition("\n")
        eq(status, "HTTP 200", "register answer (body %r)" % body)
        answers.append(json.loads(body))
    return answers


@case
def single_use_key_raced_by_many_machines_admits_one():
    with Net() as net:
        key = net.authkey("a", reusable=False)
        answers = register_at_once(net.server.port, key, 12)
        admitted = [a for a in answers if not a.get("Error") and a.get("MachineAuthorized")]
        refused = [a for a in answers if "already used" in (a.get("Error") or "")]
        eq(len(admitted), 1, "registrations admitted with one single-use key: %r" % answers)
        eq(len(refused), 11, "registrations refused as already used: %r" % answers)
        eq(len(net.node_rows()), 1, "nodes stored")


@case
def registrations_at_once_get_distinct_addresses():
    with Net() as net:
        key = net.authkey("a")
        answers = register_at_once(net.server.port, key, 16)
        for a in answers:
            check(not a.get("Error") and a.get("MachineAuthorized"), "answer %r" % a)
        rows = net.node_rows()
        eq(len(rows), 16, "nodes stored")
        addresses = [ip for n in rows for ip in n["ip_addresses"]]
        eq(len(set(addresses)), 32, "distinct addresses of 16 nodes: %r" % addresses)
        eq(len({n["name"] for n in rows}), 16, "distinct names")


@case
def expired_key_is_refused():
    with Net() as net:
        key = net.authkey("a")
        net.hwctl("preauthkeys", "expire", "-n", "a", key)
        c = net.client("late", key=key)
        eq(c.wait_exit(10), 1, "exit status with an expired key")
        line = [l for l in c.log_text().splitlines() if l.startswith("hwclient: ")]
        eq(len(line), 1, "one error line in %r" % c.log_text())
        check(line[0].startswith("hwclient: login failed: "), "error line %r" % line[0])
        contains(line[0], "expired")
        rc, _, _ = run_hwclient("up", "--login-server", c.login_server, "--statedir", c.dir,
                                "--authkey", "hwkey-auth-000000000000-0000", "--tun", "none", ok=False)
        eq(rc, 1, "exit status with an unknown key")
        eq(net.nodes(), {}, "no node")


@case
def login_server_by_host_name():
    with Net() as net:
        # "localhost" goes through the resolver thread, and may give ::1 first, where
        # nothing listens: the next address must be tried.
        c = net.client("named", key=net.authkey("a"),
                       login_server="http://localhost:%d" % net.server.port)
        c.wait_running()
        eq(c.status()["ControlURL"], "http://localhost:%d" % net.server.port, "ControlURL")


@case
def logout_while_waiting_for_the_admin():
    with Net() as net:
        net.namespace("a")
        c = net.client("undecided")
        c.wait_auth_url()
        _, out, _ = c.cli("logout")
        eq(out, "Logged out.\n", "logout output")
        st = c.status()
        eq((st["BackendState"], st["AuthURL"]), ("NeedsLogin", ""), "state after logout")
        eq(net.nodes(), {}, "no node")


@case
def unreachable_server_is_retried_then_joined():
    with Net() as net:
        key = net.authkey("a")
        net.server.stop()
        c = net.client("patient", key=key)
        st = c.wait_for(lambda st: any("not connected to the control server" in h
                                       for h in st["Health"]), 5, "a health message")
        eq(st["BackendState"], "Starting", "state while the server is down")
        rc, out, _ = c.cli("status")
        contains(out, "# Health check:")
        net.server.start()
        c.wait_running(40)


# ---------------------------------------------------------------- bad input on the wire

def upgrade(port, handshake_header, extra_headers=""):
    """A raw POST /ts2021; returns (status, bytes after the head, closed?)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
    try:
        req = ("POST /ts2021 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: tailscale-control-protocol\r\n"
               "Connection: upgrade\r\n%s%sContent-Length: 0\r\n\r\n"
               % (port, "X-Tailscale-Handshake: %s\r\n" % handshake_header
                  if handshake_header is not None else "", extra_headers))
        s.sendall(req.encode())
        data = b""
        closed = False
        deadline = time.monotonic() + 5 * SLOW
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                closed = True
                break
            data += b
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep and not head.startswith(b"HTTP/1.1 101"):
                m = re.search(rb"content-length:\s*(\d+)", head, re.I)
                if m and len(rest) >= int(m.group(1)):
                    break
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split()[1]) if head.startswith(b"HTTP/1.") else None
        return status, rest, closed
    finally:
        s.close()


def probe(port, *args):
    p = subprocess.run([HWPROBE, "http://127.0.0.1:%d" % port] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30 * SLOW, text=True)
    hwtest._check_sanitizer(p.stderr, "hwprobe")
    return p.returncode, p.stdout


def still_working(net, watcher, subject, rows_before, conn_before, label):
    """The server's node list is unchanged, the watcher never reconnected, and a change
    still reaches it."""
    eq([(n["id"], n["name"], n["ip_addresses"]) for n in net.node_rows()],
       [(n["id"], n["name"], n["ip_addresses"]) for n in rows_before], "nodes after %s" % label)
    eq(connects(watcher), conn_before, "%s reconnected after %s" % (watcher.hostname, label))
    nid = subject.node_id()
    new = "after-%s" % re.sub(r"[^a-z0-9]+", "-", label)[:40].strip("-")
    net.hwctl("nodes", "rename", "-i", nid, new)
    watcher.wait_for(lambda st: any(p["DNSName"].startswith(new + ".") for p in st["Peer"].values()),
                     2, "the rename after %s" % label)


@case
def garbage_on_the_wire_disturbs_nobody():
    with Net() as net:
        a = start_tailnet(net, "a", ["watcher", "subject"])
        watcher, subject = a
        port = net.server.port
        rows = net.node_rows()
        conn_before = connects(watcher)

        # 1. a handshake header that is not base64
        status, body, _ = upgrade(port, "!!!not-base64!!!")
        eq(status, 400, "status for a garbage X-Tailscale-Handshake")
        still_working(net, watcher, subject, rows, conn_before, "garbage handshake header")
        rows = net.node_rows()

        # 2. no handshake header at all
        status, _, _ = upgrade(port, None)
        eq(status, 400, "status without X-Tailscale-Handshake")

        # 3. a truncated initiation: valid base64 of 50 bytes
        init = bytes([0, 133, 1, 0, 96]) + os.urandom(45)
        status, body, closed = upgrade(port, base64.b64encode(init).decode())
        check(status == 400 or (status == 101 and (body[:1] == b"\x03" or body == b"") and closed),
              "truncated initiation: status %r, body %r, closed %r" % (status, body[:40], closed))
        still_working(net, watcher, subject, rows, conn_before, "truncated initiation")
        rows = net.node_rows()

        # 4. a 101-byte initiation whose crypto is garbage: no session, connection closed
        init = bytes([0, 133, 1, 0, 96]) + os.urandom(96)
        status, body, closed = upgrade(port, base64.b64encode(init).decode())
        check(status == 400 or (status == 101 and not body.startswith(b"\x02") and closed),
              "forged initiation: status %r, body %r, closed %r" % (status, body[:40], closed))

        # 5. a wrong Upgrade value
        s = socket.create_connection(("127.0.0.1", port), timeout=5 * SLOW)
        s.sendall(b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: websocketz\r\nConnection: upgrade\r\n"
                  b"X-Tailscale-Handshake: " + base64.b64encode(init) + b"\r\nContent-Length: 0\r\n\r\n")
        head = s.recv(4096)
        s.close()
        check(head.startswith(b"HTTP/1.1 400") or head.startswith(b"HTTP/1.1 500"),
              "wrong Upgrade answered %r" % head[:60])
        still_working(net, watcher, subject, rows, conn_before, "bad upgrades")
        rows = net.node_rows()

        # 6. HTTP/2 garbage inside a valid Noise session closes that session only
        rc, out = probe(port, "h2-garbage")
        eq(rc, 0, "hwprobe h2-garbage: %s" % out.strip())
        contains(out, "closed:")
        still_working(net, watcher, subject, rows, conn_before, "HTTP/2 garbage")
        rows = net.node_rows()

        # 7. a Noise record that fails authentication, and one larger than 4096 bytes
        for mode in ("bad-record", "huge-record"):
            rc, out = probe(port, mode)
            eq(rc, 0, "hwprobe %s: %s" % (mode, out.strip()))
            still_working(net, watcher, subject, rows, conn_before, mode)
            rows = net.node_rows()


@case
def invalid_register_and_map_requests_get_clear_errors():
    with Net() as net:
        a = start_tailnet(net, "a", ["watcher", "subject"])
        watcher, subject = a
        port = net.server.port
        rows = net.node_rows()
        conn_before = connects(watcher)
        rc, out = probe(port, "post", "/machine/register", "{this is not json")
        eq(rc, 0, "hwprobe post: %s" % out)
        status, _, body = out.partition("\n")
        eq(status, "HTTP 400", "status of a register request that is not JSON (body %r)" % body)
        check(len(body.strip()) > 5, "a reason in the body: %r" % body)
        rc, out = probe(port, "post", "/machine/register", '{"Version":133,"NodeKey":"nodekey:zz"}')
        status, _, body = out.partition("\n")
        eq(status, "HTTP 400", "status of a register request with a bad key (body %r)" % body)
        contains(body, "NodeKey")
        rc, out = probe(port, "post", "/machine/map", '{"Version":133,"NodeKey":"nodekey:%s"}'
                        % ("ab" * 32))
        status, _, body = out.partition("\n")
        check(status in ("HTTP 404", "HTTP 401", "HTTP 403"),
              "map for an unknown node key: %r %r" % (status, body))
        rc, out = probe(port, "post", "/machine/register", "[" * 5000)
        status, _, _ = out.partition("\n")
        eq(status, "HTTP 400", "deeply nested JSON")
        still_working(net, watcher, subject, rows, conn_before, "invalid requests")


main()
