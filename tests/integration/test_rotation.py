#!/usr/bin/env python3
"""Register flows that hwclient does not exercise, driven with hwprobe as one machine
(same machine key across runs): node-key rotation with OldNodeKey, rotation refused for
another machine or an expired node, and a re-login of a known machine with a pre-auth key
keeping its node and addresses."""
import json
import os
import subprocess

from hwtest import BUILD, Server, case, check, contains, eq

HWPROBE = os.path.join(BUILD, "tools", "hwprobe")
ZERO = "nodekey:" + "00" * 32


def nodekey():
    return "nodekey:" + os.urandom(32).hex()


def register(s, machine_file, body):
    env = dict(os.environ, HWPROBE_MACHINE_KEY=machine_file)
    out = subprocess.run([HWPROBE, "http://127.0.0.1:%d" % s.port, "post", "/machine/register",
                          json.dumps(body)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=30)
    text = out.stdout.decode()
    check(out.returncode == 0, "hwprobe failed: %s %s" % (text, out.stderr.decode()))
    status_line, _, rest = text.partition("\n")
    eq(status_line.strip(), "HTTP 200", "register status")
    return json.loads(rest)


def req(node_key, old=ZERO, authkey=None, hostname="probe"):
    r = {"Version": 133, "NodeKey": node_key, "OldNodeKey": old,
         "Expiry": "0001-01-01T00:00:00Z", "Followup": "",
         "Hostinfo": {"Hostname": hostname, "OS": "linux"}}
    if authkey:
        r["Auth"] = {"AuthKey": authkey}
    return r


@case
def node_key_rotation_keeps_the_node():
    with Server() as s:
        s.hwctl("namespaces", "create", "lab")
        key = s.hwctl_json("preauthkeys", "create", "-n", "lab", "--reusable")["key"]
        m1 = os.path.join(s.dir, "m1.key")
        k1 = nodekey()
        ans = register(s, m1, req(k1, authkey=key))
        eq((ans["Error"], ans["MachineAuthorized"]), ("", True), "auth-key login")
        before = s.hwctl_json("nodes", "list")
        eq(len(before), 1, "one node")

        # Same machine, new key, old key named, no credentials: rotated in place.
        k2 = nodekey()
        ans = register(s, m1, req(k2, old=k1))
        eq((ans["Error"], ans["AuthURL"], ans["NodeKeyExpired"]), ("", "", False), "rotation answer")
        after = s.hwctl_json("nodes", "list")
        eq(len(after), 1, "still one node")
        eq((after[0]["id"], after[0]["ip_addresses"]), (before[0]["id"], before[0]["ip_addresses"]),
           "same node, same addresses")
        eq(after[0]["node_key"], k2, "new node key stored")

        # Another machine cannot take over the node by naming its key.
        m2 = os.path.join(s.dir, "m2.key")
        ans = register(s, m2, req(nodekey(), old=k2))
        check(ans["AuthURL"].startswith("http://127.0.0.1:%d/register/" % s.port),
              "another machine must log in: %r" % ans)
        eq(s.hwctl_json("nodes", "list")[0]["node_key"], k2, "node key unchanged")

        # An expired node must log in again: rotation alone is not enough.
        s.hwctl("nodes", "expire", "-i", str(after[0]["id"]))
        k3 = nodekey()
        ans = register(s, m1, req(k3, old=k2))
        check(ans["AuthURL"] != "", "expired node gets an AuthURL: %r" % ans)

        # ... and a pre-auth key re-login of the same machine keeps its node and addresses.
        ans = register(s, m1, req(k3, old=k2, authkey=key))
        eq((ans["Error"], ans["MachineAuthorized"], ans["NodeKeyExpired"]), ("", True, False),
           "re-login with a key")
        final = s.hwctl_json("nodes", "list")
        eq(len(final), 1, "still one node")
        eq((final[0]["id"], final[0]["ip_addresses"], final[0]["node_key"], final[0]["expired"]),
           (before[0]["id"], before[0]["ip_addresses"], k3, False), "same node, fresh key")


def post(s, machine_file, path, body):
    env = dict(os.environ, HWPROBE_MACHINE_KEY=machine_file)
    out = subprocess.run([HWPROBE, "http://127.0.0.1:%d" % s.port, "post", path, json.dumps(body)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    check(out.returncode == 0, "hwprobe failed: %s" % out.stderr.decode())
    status, _, rest = out.stdout.decode().partition("\n")
    return status.strip(), rest


@case
def lite_map_update_is_stored_and_answered_empty():
    """The non-streaming update tailscaled sends when its endpoints or NetInfo change
    (OmitPeers true, no Stream): 200 with an empty body, and the server lives on."""
    with Server() as s:
        s.hwctl("namespaces", "create", "lab")
        key = s.hwctl_json("preauthkeys", "create", "-n", "lab")["key"]
        m = os.path.join(s.dir, "lite.key")
        k = nodekey()
        eq(register(s, m, req(k, authkey=key))["Error"], "", "login")
        body = {"Version": 133, "Compress": "zstd", "KeepAlive": True, "NodeKey": k,
                "DiscoKey": "discokey:" + os.urandom(32).hex(), "OmitPeers": True,
                "Hostinfo": {"Hostname": "probe", "OS": "linux",
                             "NetInfo": {"PreferredDERP": 901, "DERPLatency": {"901-v4": 0.001}}},
                "Endpoints": ["127.0.0.1:41641"], "EndpointTypes": [2]}
        for _ in range(3):
            status, rest = post(s, m, "/machine/map", body)
            eq((status, rest.strip()), ("HTTP 200", ""), "lite update answer")
        eq(s.api("GET", "/api/v1/health")[0], 200, "server alive")
        row = s.sqlite("SELECT endpoints, disco_key FROM nodes")[0]
        contains(row[0], "127.0.0.1:41641", "endpoints stored")
        eq(row[1], body["DiscoKey"], "disco key stored")


@case
def a_machine_waits_for_one_login_at_a_time():
    with Server() as s:
        m = os.path.join(s.dir, "waiting.key")
        first = register(s, m, req(nodekey()))["AuthURL"]
        second = register(s, m, req(nodekey()))["AuthURL"]
        check(first and second and first != second, "two AuthURLs %r %r" % (first, second))
        rows = s.sqlite("SELECT id FROM pending_registrations")
        eq([r[0] for r in rows], [second.rsplit("/", 1)[1]], "only the newest login waits")
        other = os.path.join(s.dir, "other.key")
        register(s, other, req(nodekey()))
        eq(len(s.sqlite("SELECT id FROM pending_registrations")), 2, "another machine waits too")


@case
def too_old_client_gets_a_message():
    with Server() as s:
        m = os.path.join(s.dir, "old.key")
        r = req(nodekey())
        r["Version"] = 90
        ans = register(s, m, r)
        contains(ans["Error"], "too old", "error shown to the user")
        eq(s.hwctl_json("nodes", "list"), [], "nothing stored")


if __name__ == "__main__":
    import hwtest
    hwtest.main()
