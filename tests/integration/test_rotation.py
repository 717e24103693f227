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
