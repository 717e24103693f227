"""The access policy end to end: a real headwater with a policy, real `hwclient up`
daemons in two namespaces, and what each client actually received (`hwclient status`
for peers, the netmap's PacketFilterRules for the filter). Policy changes (file
rewrite, SIGHUP, `hwctl policy set`) must reach the affected clients within 1 s; broken
policies are refused with the line named and the old one kept; tags and autoApprovers
follow tagOwners."""
import ipaddress
import json
import os
import signal
import sys
import time

from hwnet import Net, wait_until
from hwtest import SLOW, Server, case, check, contains, eq, main

PROPAGATION_LIMIT = 1.0  # seconds, as the issue states

# Users are written "alice@" so the policy loads before the namespaces exist.
BASE_POLICY = """{
  // who is who
  "groups": {"group:dev": ["alice@"]},
  "hosts": {"office": "10.77.0.0/16"},
  "tagOwners": {
    "tag:web": ["bob@"],
    "tag:ops": ["alice@"],
  },
  "acls": [
    {"action": "accept", "src": ["group:dev"], "dst": ["tag:web:80,443"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["group:dev"], "dst": ["office:22"]},
  ],
  "autoApprovers": {"routes": {"10.77.0.0/16": ["alice@"]}},
  "tests": [
    {"src": "alice@", "accept": ["tag:web:443"], "deny": ["tag:web:22"]},
  ],
}
"""

# BASE plus bob's devices reaching the web server on 22.
WIDER_POLICY = BASE_POLICY.replace(
    '{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},',
    '{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},\n'
    '    {"action": "accept", "src": ["bob@"], "dst": ["tag:web:22"]},')

FAILING_TEST_POLICY = BASE_POLICY.replace('"deny": ["tag:web:22"]', '"deny": ["tag:web:443"]')
TYPO_POLICY = BASE_POLICY.replace('"dst": ["tag:web:80,443"]', '"dst": ["tag:wbe:80,443"]')


def measured(what, seconds):
    print("# %s: %.0f ms" % (what, seconds * 1000), flush=True)
    sys.stderr.write("%s: %.0f ms\n" % (what, seconds * 1000))
    return seconds


def within(seconds, what):
    check(seconds < PROPAGATION_LIMIT * SLOW,
          "%s took %.0f ms, more than the %.0f ms allowed" % (what, seconds * 1000,
                                                              PROPAGATION_LIMIT * SLOW * 1000))


def peer_names(client):
    return sorted(client.peers().keys())


def wait_peers(client, names, timeout=5):
    want = sorted(names)
    return client.wait_for(lambda st: sorted(p["HostName"] for p in (st.get("Peer") or {}).values()) == want,
                           timeout, "peers %s" % want)


def filter_rules(client):
    return client.cli_netmap().get("PacketFilterRules") or []


def v4(client):
    return [ip for ip in client.ips() if ipaddress.ip_address(ip).version == 4][0]


def allowed(rules, src_ip, dst_ip, port):
    """Whether a packet filter (tailcfg.FilterRule list) lets src reach dst:port over TCP."""
    src, dst = ipaddress.ip_address(src_ip), ipaddress.ip_address(dst_ip)

    def covers(text, addr):
        if text == "*":
            return True
        if "-" in text:
            lo, hi = (ipaddress.ip_address(x) for x in text.split("-"))
            return lo.version == addr.version and lo <= addr <= hi
        net = ipaddress.ip_network(text, strict=False)
        return net.version == addr.version and addr in net

    for r in rules:
        protos = r.get("IPProto") or [6, 17, 1, 58]
        if 6 not in protos:
            continue
        if not any(covers(s, src) for s in r.get("SrcIPs") or []):
            continue
        for d in r.get("DstPorts") or []:
            ports = d.get("Ports") or {}
            if covers(d["IP"], dst) and ports.get("First", 0) <= port <= ports.get("Last", 65535):
                return True
    return False


def write_policy(path, text):
    """Replaces the file the way editors and config managers do: a new file renamed over."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


class Tailnet:
    """alice: a1, a2; bob: b1 and the tag:web server web (pre-auth key tags)."""

    def __init__(self, net):
        self.net = net
        alice = net.authkey("alice")
        bob = net.authkey("bob")
        web_key = net.authkey("bob", extra=("-t", "tag:web"))
        self.a1 = net.client("a1", key=alice)
        self.a2 = net.client("a2", key=alice)
        self.b1 = net.client("b1", key=bob)
        self.web = net.client("web", key=web_key)
        self.all = [self.a1, self.a2, self.b1, self.web]
        for c in self.all:
            c.wait_running()

    def expect_base(self):
        wait_peers(self.a1, ["a2", "web"])
        wait_peers(self.a2, ["a1", "web"])
        wait_peers(self.web, ["a1", "a2"])
        wait_peers(self.b1, [])


def policy_file_net(policy_text=BASE_POLICY):
    import tempfile
    d = tempfile.mkdtemp(prefix="hwpol-")
    path = os.path.join(d, "policy.hujson")
    with open(path, "w") as f:
        f.write(policy_text)
    return Net(config={"policy": {"mode": "file", "path": path}}), path


@case
def peers_and_filters_follow_the_policy():
    net, _ = policy_file_net()
    with net:
        t = Tailnet(net)
        t.expect_base()
        web_rules = wait_until(lambda: filter_rules(t.web) or None, 5, "web's packet filter")
        for c in (t.a1, t.a2):
            check(allowed(web_rules, v4(c), v4(t.web), 443), "%s may reach web:443" % c.hostname)
            check(allowed(web_rules, v4(c), v4(t.web), 80), "%s may reach web:80" % c.hostname)
            check(not allowed(web_rules, v4(c), v4(t.web), 22), "%s may not reach web:22" % c.hostname)
        check(not allowed(web_rules, v4(t.b1), v4(t.web), 443), "b1 may not reach web")
        a1_rules = filter_rules(t.a1)
        check(allowed(a1_rules, v4(t.a2), v4(t.a1), 22), "autogroup:self: a2 reaches a1 on any port")
        check(not allowed(a1_rules, v4(t.web), v4(t.a1), 80), "web may not reach a1")
        check(not allowed(a1_rules, v4(t.b1), v4(t.a1), 80), "b1 may not reach a1")
        b1_rules = filter_rules(t.b1)
        check(not any(allowed(b1_rules, v4(c), v4(t.b1), 22) for c in (t.a1, t.a2, t.web)),
              "nobody reaches b1: %r" % b1_rules)
        # The tagged server belongs to its tag, not to bob: bob's autogroup:self skips it.
        check("b1" not in peer_names(t.web), "web sees b1")
        status = t.web.status()
        eq(sorted(status["Self"].get("Tags") or []), ["tag:web"], "web's tags")
        # Peers from another namespace come with their owner's profile.
        nm = t.web.cli_netmap()
        owners = {p["User"] for p in nm.get("Peers") or []}
        names = {str(up.get("LoginName")) for k, up in (nm.get("UserProfiles") or {}).items()
                 if up.get("ID") in owners}
        eq(sorted(names), ["alice"], "profiles of web's peers' owners")


@case
def file_change_and_sighup_reach_clients_within_a_second():
    net, path = policy_file_net()
    with net:
        t = Tailnet(net)
        t.expect_base()
        start = time.monotonic()
        write_policy(path, WIDER_POLICY)
        wait_peers(t.b1, ["web"], timeout=5)
        wait_peers(t.web, ["a1", "a2", "b1"], timeout=5)
        t.web.wait_for(lambda st: True)
        wait_until(lambda: allowed(filter_rules(t.web), v4(t.b1), v4(t.web), 22) or None, 5,
                   "web's filter letting b1 in on 22")
        within(measured("file change to b1 and web", time.monotonic() - start), "a file change")
        # A broken file keeps the policy in force and says where the problem is.
        write_policy(path, TYPO_POLICY)
        wait_until(lambda: "tag:wbe" in net.server.log_text() or None, 5, "the refusal in the log")
        log = net.server.log_text()
        contains(log, "policy.hujson:10", "the log names the line")
        contains(log, "policy in force stays")
        time.sleep(0.3)
        eq(peer_names(t.b1), ["web"], "b1's peers after a broken file")
        # SIGHUP re-reads the (fixed) file. The file is written but not closed yet, so
        # the watch (close, rename) has not fired: only the signal can bring it in.
        with open(path, "w") as f:
            f.write(BASE_POLICY)
            f.flush()
            time.sleep(0.3)
            eq(peer_names(t.b1), ["web"], "b1's peers before the SIGHUP")
            start = time.monotonic()
            net.server.proc.send_signal(signal.SIGHUP)
            wait_peers(t.b1, [], timeout=5)
            wait_peers(t.web, ["a1", "a2"], timeout=5)
            within(measured("SIGHUP to b1 and web", time.monotonic() - start), "a SIGHUP reload")
        contains(net.server.log_text(), "policy reload (SIGHUP)")


@case
def broken_policy_at_start_stops_the_server():
    import subprocess
    from hwtest import HEADWATER
    import tempfile
    path = os.path.join(tempfile.mkdtemp(prefix="hwpol-"), "policy.hujson")
    write_policy(path, TYPO_POLICY)
    s = Server(start=False, config={"policy": {"mode": "file", "path": path}})
    r = subprocess.run([HEADWATER, "serve", "-c", s.config_path], capture_output=True, text=True,
                       timeout=20)
    eq(r.returncode, 1, "exit status")
    contains(r.stderr, path + ":10")
    contains(r.stderr, "tag:wbe")
    write_policy(path, FAILING_TEST_POLICY)
    r = subprocess.run([HEADWATER, "serve", "-c", s.config_path], capture_output=True, text=True,
                       timeout=20)
    eq(r.returncode, 1, "exit status with a failing test")
    contains(r.stderr, "tests[0]")
    contains(r.stderr, "test failed")
    # configtest checks the file too.
    r = subprocess.run([HEADWATER, "configtest", "-c", s.config_path], capture_output=True, text=True,
                       timeout=20)
    eq(r.returncode, 1, "configtest exit status")
    contains(r.stderr, "test failed")
    write_policy(path, BASE_POLICY)
    r = subprocess.run([HEADWATER, "configtest", "-c", s.config_path], capture_output=True, text=True,
                       timeout=20)
    eq(r.returncode, 0, "configtest with a good policy: %s" % r.stderr)
    s.close(check=False)


@case
def hwctl_policy_in_database_mode():
    with Net(config={"policy": {"mode": "database"}}) as net:
        d = net.server.dir
        path = os.path.join(d, "p.hujson")
        t = Tailnet(net)
        # No policy yet: namespaces are the boundary.
        wait_peers(t.a1, ["a2"])
        wait_peers(t.b1, ["web"])
        _, out, err = net.hwctl("policy", "get")
        contains(err, "no policy")
        with open(path, "w") as f:
            f.write(BASE_POLICY)
        _, out, _ = net.hwctl("policy", "check", "-f", path)
        contains(out, "valid")
        start = time.monotonic()
        net.hwctl("policy", "set", "-f", path)
        t.expect_base()
        within(measured("hwctl policy set to every client", time.monotonic() - start), "policy set")
        _, out, _ = net.hwctl("policy", "get")
        eq(out, BASE_POLICY, "policy get gives the text back")
        eq(net.hwctl_json("policy", "get")["mode"], "database")
        # A policy whose tests fail is refused, and nothing changes.
        before = {c.hostname: peer_names(c) for c in t.all}
        web_before = filter_rules(t.web)
        with open(path, "w") as f:
            f.write(FAILING_TEST_POLICY)
        _, _, err = net.hwctl("policy", "set", "-f", path, ok=False)
        contains(err, "p.hujson:")
        contains(err, "test failed")
        _, _, err = net.hwctl("policy", "check", "-f", path, ok=False)
        contains(err, "test failed")
        # A typo names its line.
        with open(path, "w") as f:
            f.write(TYPO_POLICY)
        _, _, err = net.hwctl("policy", "set", "-f", path, ok=False)
        contains(err, "p.hujson:10")
        contains(err, "tag:wbe")
        time.sleep(0.3)
        eq({c.hostname: peer_names(c) for c in t.all}, before, "peers after refused policies")
        eq(filter_rules(t.web), web_before, "web's filter after refused policies")
        eq(net.hwctl("policy", "get")[1], BASE_POLICY, "the stored policy")
        # A wider policy reaches b1 and web; the policy survives a restart.
        with open(path, "w") as f:
            f.write(WIDER_POLICY)
        start = time.monotonic()
        net.hwctl("policy", "set", "-f", path)
        wait_peers(t.b1, ["web"])
        wait_peers(t.web, ["a1", "a2", "b1"])
        within(measured("wider policy to b1 and web", time.monotonic() - start), "policy set")
        net.server.stop()
        net.server.start()
        eq(net.hwctl("policy", "get")[1], WIDER_POLICY, "the policy after a restart")
        wait_peers(t.b1, ["web"], timeout=15)


@case
def hwctl_policy_set_is_refused_in_file_mode():
    net, path = policy_file_net()
    with net:
        _, _, err = net.hwctl("policy", "set", "-f", path, ok=False)
        contains(err, "policy.mode is \"file\"")
        contains(err, path)
        _, out, _ = net.hwctl("policy", "get")
        eq(out, BASE_POLICY)


@case
def tags_follow_tag_owners():
    net, _ = policy_file_net()
    with net:
        alice = net.authkey("alice")
        bob = net.authkey("bob")
        ops = net.client("ops", key=alice, extra=["--advertise-tags", "tag:ops"])
        rogue = net.client("rogue", key=bob, extra=["--advertise-tags", "tag:ops"])
        ops.wait_running()
        rogue.wait_running()
        nodes = net.nodes()
        eq(nodes["ops"]["tags"], ["tag:ops"], "alice owns tag:ops")
        eq(nodes["rogue"]["tags"], [], "bob does not own tag:ops")
        contains(net.server.log_text(), "asked for tag:ops")
        # The admin may apply any tag the policy defines, and no other.
        rid = str(nodes["rogue"]["id"])
        _, _, err = net.hwctl("nodes", "tag", "-i", rid, "-t", "tag:nope", ok=False)
        contains(err, "tag:nope is not defined")
        net.hwctl("nodes", "tag", "-i", rid, "-t", "tag:web")
        eq(net.nodes()["rogue"]["tags"], ["tag:web"])
        # As tag:web it is now reachable from alice's ops device? No: ops is tagged, and
        # group:dev names alice's untagged devices only.
        a1 = net.client("a1", key=alice)
        a1.wait_running()
        wait_peers(a1, ["rogue"])
        wait_peers(rogue, ["a1"])


@case
def auto_approvers_enable_matching_routes():
    net, _ = policy_file_net()
    with net:
        alice = net.authkey("alice")
        bob = net.authkey("bob")
        r1 = net.client("router", key=alice, extra=["--advertise-routes", "10.77.1.0/24,10.99.0.0/24"])
        r2 = net.client("other", key=bob, extra=["--advertise-routes", "10.77.2.0/24"])
        r1.wait_running()
        r2.wait_running()

        def routes():
            return {(r["node"], r["prefix"]): r["enabled"] for r in net.hwctl_json("routes", "list")}
        wait_until(lambda: routes().get(("router", "10.77.1.0/24")) or None, 5, "the approved route")
        got = routes()
        eq(got.get(("router", "10.99.0.0/24")), False, "a route outside autoApprovers")
        eq(got.get(("other", "10.77.2.0/24")), False, "bob is not an approver")
        # The approved subnet reaches the devices whose rules reach it (group:dev ->
        # office:22), in the router's AllowedIPs; bob's devices do not see the router.
        a1 = net.client("a1", key=alice)
        b1 = net.client("b1", key=bob)
        a1.wait_running()
        b1.wait_running()

        def router_allowed_ips():
            for p in a1.cli_netmap().get("Peers") or []:
                if p.get("Hostinfo", {}).get("Hostname") == "router":
                    return p.get("AllowedIPs") or []
            return []
        wait_until(lambda: "10.77.1.0/24" in router_allowed_ips() or None, 5,
                   "the approved route in the router's AllowedIPs on a1")
        check("10.99.0.0/24" not in router_allowed_ips(), "an unapproved route is not sent")
        check("router" not in peer_names(b1), "b1 sees the router")


main()
