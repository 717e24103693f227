"""Every hwctl command against a real headwater on a temp socket and database, in table,
JSON and YAML output; error lines; socket lookup; concurrency; restart persistence."""
import calendar
import ipaddress
import json
import os
import pty
import select
import subprocess
import threading
import time

import hwtest
from hwtest import HWCTL, Server, case, check, contains, eq, run_hwctl, skip

V4_NET = ipaddress.ip_network("100.64.0.0/10")
V6_NET = ipaddress.ip_network("fd7a:115c:a1e0::/48")


def table(out):
    """hwctl's table output as a list of dicts keyed by the header cells."""
    lines = [l for l in out.splitlines() if l.strip()]
    check(lines, "no table printed")
    header = [c.strip() for c in lines[0].split(" | ")]
    rows = []
    for l in lines[1:]:
        check(l == l.rstrip(), "trailing blanks in %r" % l)
        if l.endswith(" |"):
            l += " "                 # an empty last cell
        cells = [c.strip() for c in l.split(" | ")]
        eq(len(cells), len(header), "cells in table row %r" % l)
        rows.append(dict(zip(header, cells)))
    return rows


def aligned(out):
    """Every row has its column separators at the same offsets as the header."""
    lines = [l + " " if l.endswith(" |") else l for l in out.splitlines() if l.strip()]
    seps = [[i for i in range(len(l)) if l.startswith(" | ", i)] for l in lines]
    for l, s in zip(lines, seps):
        eq(s, seps[0], "separator offsets in %r (header %r)" % (l, lines[0]))


def one_line(s, *args):
    """hwctl ARGS fails with one stderr line: returns (rc, line)."""
    return s.hwctl_err(*args)


def node_by_id(s, node_id, *args):
    for n in s.hwctl_json("nodes", "list", *args):
        if n["id"] == node_id:
            return n
    return None


def rfc3339(t):
    return calendar.timegm(time.strptime(t, "%Y-%m-%dT%H:%M:%SZ"))


# ---------------------------------------------------------------- namespaces

@case
def namespaces_create_list_table():
    with Server() as s:
        _, out, err = s.hwctl("namespaces", "create", "default")
        eq(out.strip(), 'Namespace "default" created', "create output")
        eq(err, "", "stderr")
        s.hwctl("namespaces", "create", "second-ns")
        _, out, _ = s.hwctl("namespaces", "list")
        aligned(out)
        rows = table(out)
        eq(list(rows[0].keys()), ["ID", "Name", "Nodes", "Created"], "columns")
        eq([r["Name"] for r in rows], ["default", "second-ns"], "names")
        eq([r["Nodes"] for r in rows], ["0", "0"], "node counts")
        check(rows[0]["Created"][:2] == "20" and "T" not in rows[0]["Created"],
              "created time in table form: %r" % rows[0]["Created"])


@case
def namespaces_json_yaml_jsonline():
    with Server() as s:
        ns = s.hwctl_json("namespaces", "create", "default")
        eq(ns["name"], "default", "created name")
        check(isinstance(ns["id"], int), "id is a number")
        eq(ns["node_count"], 0, "node_count")
        check(rfc3339(ns["created_at"]) > time.time() - 3600, "created_at is recent")
        lst = s.hwctl_json("namespaces", "list")
        eq([n["name"] for n in lst], ["default"], "json list")
        eq(lst[0]["id"], ns["id"], "same id")
        _, out, _ = s.hwctl("-o", "json-line", "namespaces", "list")
        eq(len(out.strip().splitlines()), 1, "json-line lines")
        eq(json.loads(out), lst, "json-line value")
        _, out, _ = s.hwctl("namespaces", "list", "-o", "yaml")
        contains(out, "- id: %d\n" % ns["id"], "yaml")
        contains(out, "  name: default\n", "yaml")
        contains(out, "  node_count: 0\n", "yaml")
        contains(out, '  created_at: "%s"\n' % ns["created_at"], "yaml (quoted time)")
        _, out, _ = s.hwctl("--output=yaml", "namespaces", "create", "yes")
        contains(out, 'name: "yes"\n', "yaml quotes a string that reads as a bool")


@case
def namespaces_rename():
    with Server() as s:
        s.hwctl("namespaces", "create", "old")
        s.hwctl("namespaces", "create", "taken")
        _, out, _ = s.hwctl("namespaces", "rename", "old", "new")
        eq(out.strip(), 'Namespace "old" renamed to "new"', "rename output")
        names = [n["name"] for n in s.hwctl_json("namespaces", "list")]
        eq(sorted(names), ["new", "taken"], "names after rename")
        # Headscale's flag form.
        ns = s.hwctl_json("users", "rename", "--name", "new", "--new-name", "newer")
        eq(ns["name"], "newer", "renamed with flags")
        rc, line = one_line(s, "namespaces", "rename", "newer", "taken")
        eq(rc, 1, "exit status")
        eq(line, 'hwctl: namespace "taken" already exists', "clash")
        rc, line = one_line(s, "namespaces", "rename", "ghost", "x")
        eq(line, 'hwctl: namespace "ghost" not found', "unknown")
        rc, line = one_line(s, "namespaces", "rename", "newer", "Bad_Name")
        check(line.startswith('hwctl: invalid namespace name "Bad_Name"'), line)
        rc, line = one_line(s, "namespaces", "rename", "newer")
        eq(rc, 2, "exit status of a usage error")
        contains(line, "the new name is required")


@case
def namespaces_destroy():
    with Server() as s:
        s.hwctl("namespaces", "create", "empty")
        s.hwctl("namespaces", "create", "busy")
        # Not a terminal and no --yes: refused before anything is sent.
        rc, line = one_line(s, "namespaces", "destroy", "empty")
        eq(rc, 2, "exit status")
        contains(line, 'hwctl: namespaces destroy: will not destroy namespace "empty" without '
                 'confirmation')
        contains(line, "--yes")
        _, out, _ = s.hwctl("namespaces", "destroy", "empty", "--yes")
        eq(out.strip(), 'Namespace "empty" destroyed', "destroy output")
        node = s.register_node("busy", "box")
        rc, line = one_line(s, "namespaces", "destroy", "busy", "--yes")
        eq(rc, 1, "exit status")
        check(line.startswith('hwctl: namespace "busy" still has 1 node'), line)
        eq(node_by_id(s, node["id"])["namespace"], "busy", "node kept")
        eq(s.hwctl_json("namespaces", "destroy", "busy", "--force"), {}, "json answer")
        eq(s.hwctl_json("namespaces", "list"), [], "no namespaces left")
        eq(s.hwctl_json("nodes", "list"), [], "its node went with it")
        rc, line = one_line(s, "namespaces", "destroy", "busy", "--force")
        eq(line, 'hwctl: namespace "busy" not found', "destroy twice")


@case
def namespaces_invalid_names():
    with Server() as s:
        for bad in ["Bad_Name", "-lead", "trail-", "a" * 64, "dot.ted", "UPPER"]:
            rc, line = one_line(s, "namespaces", "create", "--", bad)
            eq(rc, 1, "exit status for %r" % bad)
            check(line.startswith('hwctl: invalid namespace name "%s"' % bad),
                  "message for %r: %s" % (bad, line))
        rc, line = one_line(s, "namespaces", "create", "Bad_Name")
        contains(line, "a-z", "the rule is stated")
        rc, line = one_line(s, "namespaces", "create", "-lead")
        eq((rc, line), (2, "hwctl: namespaces create: unknown option -l: see 'hwctl namespaces "
                           "create --help'"), "a leading dash needs --")
        s.hwctl("namespaces", "create", "a" * 63)
        s.hwctl("namespaces", "create", "x-1")
        rc, line = one_line(s, "namespaces", "create", "x-1")
        eq(line, 'hwctl: namespace "x-1" already exists', "duplicate")
        eq(len(s.hwctl_json("namespaces", "list")), 2, "only the valid ones exist")


@case
def namespaces_aliases():
    with Server() as s:
        s.hwctl("users", "create", "alice")
        s.hwctl("ns", "new", "bob")
        s.hwctl("user", "c", "carol")
        names = [r["Name"] for r in table(s.hwctl("users", "ls")[1])]
        eq(names, ["alice", "bob", "carol"], "names via aliases")
        s.hwctl("namespaces", "mv", "carol", "dave")
        s.hwctl("namespaces", "delete", "-n", "dave", "-y")
        s.hwctl("namespaces", "destroy", "--user", "bob", "--yes")
        eq([n["name"] for n in s.hwctl_json("namespace", "show")], ["alice"], "left")


# ---------------------------------------------------------------- nodes

@case
def nodes_register_and_list():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        eq(table(s.hwctl("nodes", "list")[1]), [], "empty list")
        keys = s.add_pending("reg-abc123", "My-Laptop")
        _, out, _ = s.hwctl("nodes", "register", "-n", "default", "--key", "reg-abc123")
        check(out.startswith('Node my-laptop registered in namespace "default" (id '), out)
        _, out, _ = s.hwctl("nodes", "list")
        aligned(out)
        rows = table(out)
        eq(list(rows[0].keys()), ["ID", "Hostname", "Name", "Namespace", "IP addresses",
                                  "Ephemeral", "Last seen", "Expiration", "Connected",
                                  "Expired", "Tags", "Routes"], "columns")
        eq(len(rows), 1, "rows")
        r = rows[0]
        eq(r["Hostname"], "My-Laptop", "hostname")
        eq(r["Name"], "my-laptop", "given name")
        eq(r["Namespace"], "default", "namespace")
        v4, v6 = [ipaddress.ip_address(a) for a in r["IP addresses"].split(", ")]
        check(v4 in V4_NET, "%s in %s" % (v4, V4_NET))
        check(v6 in V6_NET, "%s in %s" % (v6, V6_NET))
        eq(r["Ephemeral"], "false", "ephemeral")
        eq(r["Connected"], "offline", "connected")
        eq(r["Expired"], "no", "expired")
        eq(r["Tags"], "", "tags")
        n = s.hwctl_json("nodes", "list")[0]
        eq(n["machine_key"], keys["machine_key"], "machine key")
        eq(n["node_key"], keys["node_key"], "node key")
        eq(n["register_method"], "cli", "register method")
        eq(n["ip_addresses"], [str(v4), str(v6)], "addresses in JSON")
        eq(n["online"], False, "online")
        eq(n["routes"], {"advertised": [], "enabled": [], "primary": []}, "routes")
        eq(s.hwctl_json("namespaces", "list")[0]["node_count"], 1, "node_count")
        _, out, _ = s.hwctl("nodes", "list", "-o", "yaml")
        for part in ["- id: %d\n" % n["id"], "  name: my-laptop\n", "  ip_addresses:\n"
                     '  - "%s"\n' % v4, "  ephemeral: false\n", "  last_seen: null\n",
                     "  routes:\n    advertised: []\n    enabled: []\n    primary: []\n", "  tags: []\n"]:
            contains(out, part, "nodes list -o yaml")
        # The registration id is used up.
        rc, line = one_line(s, "nodes", "register", "-n", "default", "--key", "reg-abc123")
        eq(rc, 1, "exit status")
        contains(line, "reg-abc123")
        # A second node gets other addresses and its own name.
        n2 = s.register_node("default", "my-laptop")
        check(n2["name"] != "my-laptop" and n2["name"].startswith("my-laptop"), n2["name"])
        check(set(n2["ip_addresses"]).isdisjoint(n["ip_addresses"]), "distinct addresses")
        # Filter by namespace.
        s.hwctl("namespaces", "create", "other")
        eq(s.hwctl_json("nodes", "list", "-n", "other"), [], "filter other")
        eq(len(s.hwctl_json("nodes", "list", "--namespace", "default")), 2, "filter default")


@case
def nodes_register_global_namespace_form():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        s.add_pending("reg-global", "srv")
        # -n before the command, as in `hwctl -n default nodes register --key K`.
        _, out, _ = s.hwctl("-n", "default", "nodes", "register", "--key", "reg-global")
        contains(out, 'Node srv registered in namespace "default"')
        s.add_pending("reg-user", "srv2")
        s.hwctl("--user", "default", "machines", "register", "-k", "reg-user")
        eq([n["hostname"] for n in s.hwctl_json("nodes", "list")], ["srv", "srv2"], "nodes")


@case
def nodes_register_errors():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        rc, line = one_line(s, "nodes", "register", "-n", "default", "--key", "no-such-id")
        eq(rc, 1, "exit status")
        contains(line, "no-such-id")
        s.add_pending("reg-x", "h")
        rc, line = one_line(s, "nodes", "register", "-n", "ghost", "--key", "reg-x")
        eq(line, 'hwctl: namespace "ghost" not found', "unknown namespace")
        rc, line = one_line(s, "nodes", "register", "--key", "reg-x")
        eq(rc, 2, "usage exit status")
        check(line.startswith("hwctl: nodes register: -n/--namespace is required"), line)
        rc, line = one_line(s, "nodes", "register", "-n", "default")
        check(line.startswith("hwctl: nodes register: -k/--key is required"), line)
        s.hwctl("nodes", "register", "-n", "default", "--key", "reg-x")


@case
def nodes_rename():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        a = s.register_node("default", "alpha")
        b = s.register_node("default", "beta")
        _, out, _ = s.hwctl("nodes", "rename", "-i", a["id"], "web")
        eq(out.strip(), "Node %d renamed to web" % a["id"], "rename output")
        eq(node_by_id(s, a["id"])["name"], "web", "new name")
        eq(node_by_id(s, a["id"])["hostname"], "alpha", "hostname unchanged")
        rc, line = one_line(s, "nodes", "rename", "-i", b["id"], "web")
        eq(rc, 1, "exit status")
        contains(line, '"web"', "clash names the name")
        eq(node_by_id(s, b["id"])["name"], "beta", "clash changed nothing")
        rc, line = one_line(s, "nodes", "rename", "-i", b["id"], "Not_Valid")
        contains(line, "Not_Valid")
        n = s.hwctl_json("node", "rename", "--identifier", b["id"], "db")
        eq(n["name"], "db", "json answer")
        rc, line = one_line(s, "nodes", "rename", "-i", 999, "x")
        eq(line, "hwctl: node 999 not found", "unknown node")
        rc, line = one_line(s, "nodes", "rename", "web")
        eq(rc, 2, "usage exit status")
        check(line.startswith("hwctl: nodes rename: -i/--identifier is required"), line)
        rc, line = one_line(s, "nodes", "rename", "-i", "abc", "x")
        eq(rc, 2, "usage exit status")
        contains(line, '"abc"')
        rc, line = one_line(s, "nodes", "rename", "-i", a["id"])
        contains(line, "NEW_NAME is required")


@case
def nodes_move():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        s.hwctl("namespaces", "create", "other")
        n = s.register_node("default", "mover")
        _, out, _ = s.hwctl("nodes", "move", "-i", n["id"], "-n", "other")
        eq(out.strip(), 'Node %d (mover) moved to namespace "other"' % n["id"], "output")
        eq([x["id"] for x in s.hwctl_json("nodes", "list", "-n", "other")], [n["id"]], "moved")
        eq(s.hwctl_json("nodes", "list", "-n", "default"), [], "gone from default")
        counts = {x["name"]: x["node_count"] for x in s.hwctl_json("namespaces", "list")}
        eq(counts, {"default": 0, "other": 1}, "node counts")
        moved = s.hwctl_json("nodes", "mv", "-i", n["id"], "--namespace", "default")
        eq(moved["namespace"], "default", "json answer")
        eq(moved["ip_addresses"], n["ip_addresses"], "addresses kept")
        rc, line = one_line(s, "nodes", "move", "-i", n["id"], "-n", "ghost")
        eq(line, 'hwctl: namespace "ghost" not found', "unknown namespace")
        rc, line = one_line(s, "nodes", "move", "-i", n["id"])
        eq(rc, 2, "usage")
        check(line.startswith("hwctl: nodes move: -n/--namespace is required"), line)


@case
def nodes_tag():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        n = s.register_node("default", "tagged")
        s.hwctl("nodes", "expire", "-i", n["id"])
        eq(node_by_id(s, n["id"])["expired"], True, "expired before tagging")
        _, out, _ = s.hwctl("nodes", "tag", "-i", n["id"], "-t", "tag:web",
                            "--tags", "tag:db,tag:prod")
        # As in Tailscale, a tagged node's key does not expire.
        eq(node_by_id(s, n["id"])["expired"], False, "expiry lifted by tagging")
        eq(out.strip(), "Node %d (tagged) tags: tag:web, tag:db, tag:prod" % n["id"], "output")
        eq(sorted(node_by_id(s, n["id"])["tags"]), ["tag:db", "tag:prod", "tag:web"], "tags")
        row = table(s.hwctl("nodes", "list")[1])[0]
        eq(sorted(row["Tags"].split(",")), ["tag:db", "tag:prod", "tag:web"], "table tags")
        # Replaces, not adds.
        eq(s.hwctl_json("nodes", "tag", "-i", n["id"], "-t", "tag:only")["tags"], ["tag:only"],
           "replaced")
        rc, line = one_line(s, "nodes", "tag", "-i", n["id"], "-t", "web")
        eq(rc, 1, "exit status")
        contains(line, '"web"', "bad tag named")
        eq(node_by_id(s, n["id"])["tags"], ["tag:only"], "bad tag changed nothing")
        _, out, _ = s.hwctl("nodes", "tag", "-i", n["id"])
        eq(out.strip(), "Node %d (tagged) has no tags now" % n["id"], "clear output")
        eq(node_by_id(s, n["id"])["tags"], [], "cleared")


@case
def nodes_expire():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        n = s.register_node("default", "old")
        other = s.register_node("default", "fresh")
        eq(n["expired"], False, "not expired at first")
        _, out, _ = s.hwctl("nodes", "expire", "-i", n["id"])
        eq(out.strip(), "Node %d (old) expired: it must log in again" % n["id"], "output")
        rows = {r["ID"]: r for r in table(s.hwctl("nodes", "list")[1])}
        eq(rows[str(n["id"])]["Expired"], "yes", "table shows expired")
        check(rows[str(n["id"])]["Expiration"] != "-", "expiration set")
        eq(rows[str(other["id"])]["Expired"], "no", "other node untouched")
        j = node_by_id(s, n["id"])
        eq(j["expired"], True, "json expired")
        check(rfc3339(j["expiry"]) <= time.time() + 5, "expiry is now or earlier")
        eq(s.hwctl_json("nodes", "logout", "-i", n["id"])["expired"], True, "again, via alias")
        rc, line = one_line(s, "nodes", "expire", "-i", 4242)
        eq(line, "hwctl: node 4242 not found", "unknown node")


@case
def nodes_delete():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        n = s.register_node("default", "doomed")
        keep = s.register_node("default", "keeper")
        rc, line = one_line(s, "nodes", "delete", "-i", n["id"])
        eq(rc, 2, "refused without confirmation")
        contains(line, "hwctl: nodes delete: will not delete node %d without confirmation"
                 % n["id"])
        check(node_by_id(s, n["id"]) is not None, "still there")
        _, out, _ = s.hwctl("nodes", "delete", "-i", n["id"], "--force")
        eq(out.strip(), "Node %d deleted" % n["id"], "output")
        eq([x["id"] for x in s.hwctl_json("nodes", "list")], [keep["id"]], "only keeper left")
        rc, line = one_line(s, "nodes", "delete", "-i", n["id"], "--force")
        eq(line, "hwctl: node %d not found" % n["id"], "delete twice")
        eq(s.hwctl_json("nodes", "del", "-i", keep["id"], "--yes"), {}, "json answer")
        eq(s.hwctl_json("namespaces", "list")[0]["node_count"], 0, "node_count")


def _run_on_tty(argv, answer, timeout=20):
    """Runs argv with stdin/stdout/stderr on a pseudo-terminal, answers the question,
    returns (rc, everything printed)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                         env=hwtest._hermetic_env(), close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout * hwtest.SLOW
    sent = False
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if not sent and b"[y/N]" in out:
                os.write(master, answer.encode() + b"\n")
                sent = True
        elif p.poll() is not None:
            break
    rc = p.wait(timeout=timeout * hwtest.SLOW)
    os.close(master)
    text = out.decode(errors="replace")
    hwtest._check_sanitizer(text, " ".join(argv))
    return rc, text


@case
def nodes_delete_asks_on_a_terminal():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        n = s.register_node("default", "asked")
        argv = [HWCTL, "--socket", s.socket, "nodes", "delete", "-i", str(n["id"])]
        rc, out = _run_on_tty(argv, "n")
        contains(out, "Delete node %d (asked)? [y/N]" % n["id"], "question")
        eq(rc, 1, "exit status after no")
        contains(out, "not confirmed")
        check(node_by_id(s, n["id"]) is not None, "kept after no")
        rc, out = _run_on_tty(argv, "y")
        eq(rc, 0, "exit status after yes (%s)" % out)
        contains(out, "Node %d deleted" % n["id"])
        eq(s.hwctl_json("nodes", "list"), [], "deleted after yes")


# ---------------------------------------------------------------- pre-auth keys

@case
def preauthkeys_create_list_expire():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        s.hwctl("namespaces", "create", "other")
        # Table mode prints the key alone, so KEY=$(hwctl preauthkeys create ...) works.
        _, out, _ = s.hwctl("preauthkeys", "create", "-n", "default")
        eq(len(out.splitlines()), 1, "one line")
        key = out.strip()
        check(key.startswith("hwkey-auth-"), "key form: %r" % key)
        k2 = s.hwctl_json("preauthkeys", "create", "--namespace", "default", "--reusable",
                          "--ephemeral", "--expiration", "24h", "--tags", "tag:a,tag:b")
        check(k2["key"].startswith("hwkey-auth-"), "json has the key")
        eq((k2["reusable"], k2["ephemeral"], k2["used"], k2["expired"]),
           (True, True, False, False), "flags")
        eq(sorted(k2["tags"]), ["tag:a", "tag:b"], "tags")
        eq(k2["namespace"], "default", "namespace")
        left = rfc3339(k2["expiration"]) - time.time()
        check(24 * 3600 - 120 < left <= 24 * 3600 + 5, "expires in 24h: %ss" % left)
        k3 = s.hwctl_json("preauthkey", "create", "-n", "other", "-e", "0", "-t", "tag:x")
        eq(k3["expiration"], None, "0 = never expires")
        # Default lifetime: 1h.
        keys = s.hwctl_json("preauthkeys", "list")
        eq(len(keys), 3, "all keys")
        check(all("key" not in k for k in keys), "list never shows a secret")
        first = [k for k in keys if k["prefix"] not in (k2["prefix"], k3["prefix"])][0]
        check(key.find(first["prefix"]) >= 0, "prefix %s is part of the key" % first["prefix"])
        left = rfc3339(first["expiration"]) - time.time()
        check(3600 - 120 < left <= 3600 + 5, "default expiry 1h: %ss" % left)
        _, out, _ = s.hwctl("preauthkeys", "list", "-n", "default")
        aligned(out)
        rows = table(out)
        eq(list(rows[0].keys()), ["ID", "Prefix", "Namespace", "Reusable", "Ephemeral", "Used",
                                  "Expired", "Expiration", "Created", "Tags"], "columns")
        eq(sorted(r["Prefix"] for r in rows), sorted([first["prefix"], k2["prefix"]]),
           "filtered by namespace")
        row2 = [r for r in rows if r["Prefix"] == k2["prefix"]][0]
        eq((row2["Reusable"], row2["Ephemeral"], row2["Used"], row2["Expired"]),
           ("true", "true", "false", "no"), "table flags")
        # Expire by prefix and by full key.
        _, out, _ = s.hwctl("preauthkeys", "expire", "-n", "default", k2["prefix"])
        eq(out.strip(), "Pre-auth key expired", "expire output")
        eq(s.hwctl_json("preauthkeys", "expire", "-n", "default", key), {}, "json answer")
        expired = {k["prefix"]: k["expired"] for k in s.hwctl_json("preauthkeys", "list")}
        eq(expired, {first["prefix"]: True, k2["prefix"]: True, k3["prefix"]: False},
           "expired flags")
        rows = table(s.hwctl("preauthkeys", "list", "-n", "default")[1])
        eq({r["Expired"] for r in rows}, {"yes"}, "table shows expired")
        rc, line = one_line(s, "preauthkeys", "expire", "-n", "other", k2["prefix"])
        eq(rc, 1, "wrong namespace")
        rc, line = one_line(s, "preauthkeys", "expire", "-n", "default")
        eq(rc, 2, "usage")
        contains(line, "KEY is required")


@case
def preauthkeys_errors():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        rc, line = one_line(s, "preauthkeys", "create", "-n", "ghost")
        eq(line, 'hwctl: namespace "ghost" not found', "unknown namespace")
        rc, line = one_line(s, "preauthkeys", "create")
        eq(rc, 2, "usage")
        check(line.startswith("hwctl: preauthkeys create: -n/--namespace is required"), line)
        rc, line = one_line(s, "preauthkeys", "create", "-n", "default", "-e", "tomorrow")
        eq(rc, 2, "bad duration is a usage error")
        contains(line, 'invalid -e/--expiration "tomorrow"')
        rc, line = one_line(s, "preauthkeys", "create", "-n", "default", "--tags", "nottag")
        eq(rc, 1, "bad tag refused by the server")
        contains(line, "nottag")
        eq(s.hwctl_json("preauthkeys", "list"), [], "nothing created")


# ---------------------------------------------------------------- API keys

@case
def apikeys_create_list_expire():
    with Server() as s:
        _, out, _ = s.hwctl("apikeys", "create")
        eq(len(out.splitlines()), 1, "one line")
        key = out.strip()
        check(key.startswith("hwkey-api-"), "key form: %r" % key)
        k2 = s.hwctl_json("apikeys", "create", "--expiration", "1h")
        check(k2["key"].startswith("hwkey-api-"), "json has the key")
        left = rfc3339(k2["expiration"]) - time.time()
        check(3600 - 120 < left <= 3600 + 5, "1h: %ss" % left)
        keys = s.hwctl_json("apikeys", "list")
        eq(len(keys), 2, "count")
        check(all("key" not in k for k in keys), "list never shows a secret")
        first = [k for k in keys if k["prefix"] != k2["prefix"]][0]
        contains(key, first["prefix"], "key")
        left = rfc3339(first["expiration"]) - time.time()
        check(90 * 86400 - 120 < left <= 90 * 86400 + 5, "default 90d: %ss" % left)
        _, out, _ = s.hwctl("apikeys", "list")
        aligned(out)
        rows = table(out)
        eq(list(rows[0].keys()), ["ID", "Prefix", "Expired", "Expiration", "Last seen",
                                  "Created"], "columns")
        eq({r["Expired"] for r in rows}, {"no"}, "none expired")
        _, out, _ = s.hwctl("apikeys", "expire", "--prefix", first["prefix"])
        eq(out.strip(), "API key expired", "expire output")
        eq(s.hwctl_json("apikey", "revoke", "-p", k2["prefix"]), {}, "json answer")
        eq({k["expired"] for k in s.hwctl_json("apikeys", "list")}, {True}, "both expired")
        rc, line = one_line(s, "apikeys", "expire", "-p", "000000000000")
        eq(rc, 1, "unknown prefix")
        rc, line = one_line(s, "apikeys", "expire")
        eq(rc, 2, "usage")
        check(line.startswith("hwctl: apikeys expire: -p/--prefix is required"), line)
        rc, line = one_line(s, "apikeys", "create", "-e", "soon")
        eq(rc, 2, "bad duration")


# ---------------------------------------------------------------- routes

@case
def routes_list_enable_disable():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        r = s.register_node("default", "router")
        other = s.register_node("default", "plain")
        s.add_routes(r["id"], ["192.168.100.0/24", "10.0.0.0/8", "0.0.0.0/0", "::/0"])
        routes = s.hwctl_json("routes", "list")
        eq(sorted(x["prefix"] for x in routes),
           ["0.0.0.0/0", "10.0.0.0/8", "192.168.100.0/24", "::/0"], "advertised")
        eq({x["enabled"] for x in routes}, {False}, "none enabled yet")
        eq({x["node_id"] for x in routes}, {r["id"]}, "node ids")
        _, out, _ = s.hwctl("routes", "enable", "-i", r["id"], "-r", "192.168.100.0/24")
        eq(out.strip(), "Route 192.168.100.0/24 of node %d (router) enabled" % r["id"],
           "enable output")
        _, out, _ = s.hwctl("routes", "list", "-i", r["id"])
        aligned(out)
        rows = {x["Prefix"]: x for x in table(out)}
        eq(list(next(iter(rows.values())).keys()),
           ["ID", "Node ID", "Node", "Prefix", "Advertised", "Enabled", "Primary"], "columns")
        eq(rows["192.168.100.0/24"]["Enabled"], "true", "enabled in table")
        eq(rows["192.168.100.0/24"]["Node"], "router", "node name")
        eq(rows["10.0.0.0/8"]["Enabled"], "false", "other route untouched")
        eq(rows["0.0.0.0/0"]["Primary"], "-", "exit routes have no primary")
        eq(node_by_id(s, r["id"])["routes"]["enabled"], ["192.168.100.0/24"], "node routes")
        # Not advertised: refused (404), nothing changes.
        rc, line = one_line(s, "routes", "enable", "-i", r["id"], "-r", "172.16.0.0/12")
        eq(rc, 1, "exit status")
        contains(line, "172.16.0.0/12")
        rc, line = one_line(s, "routes", "enable", "-i", other["id"], "-r", "10.0.0.0/8")
        contains(line, "10.0.0.0/8")
        # The exit-node pair.
        _, out, _ = s.hwctl("routes", "enable", "-i", r["id"], "-r", "0.0.0.0/0")
        contains(out, "with its exit-node pair")
        en = {x["prefix"]: x["enabled"] for x in s.hwctl_json("routes", "list", "-i", r["id"])}
        eq(en, {"192.168.100.0/24": True, "10.0.0.0/8": False, "0.0.0.0/0": True,
                "::/0": True}, "both exit routes enabled")
        route = s.hwctl_json("routes", "disable", "-i", r["id"], "-r", "::/0")
        eq((route["prefix"], route["enabled"]), ("::/0", False), "json answer")
        en = {x["prefix"]: x["enabled"] for x in s.hwctl_json("routes", "list", "-i", r["id"])}
        eq((en["0.0.0.0/0"], en["::/0"]), (False, False), "both exit routes disabled")
        s.hwctl("routes", "disable", "-i", r["id"], "-r", "192.168.100.0/24")
        eq(node_by_id(s, r["id"])["routes"]["enabled"], [], "nothing enabled")
        eq(s.hwctl_json("routes", "list", "-i", other["id"]), [], "filter by node")
        rc, line = one_line(s, "routes", "enable", "-i", r["id"])
        eq(rc, 2, "usage")
        check(line.startswith("hwctl: routes enable: -r/--route is required"), line)


# ---------------------------------------------------------------- errors, lookup, misc

@case
def error_lines():
    with Server() as s:
        rc, line = one_line(s, "nodes", "list", "-n", "x")
        eq((rc, line), (1, 'hwctl: namespace "x" not found'), "unknown namespace")
        rc, line = one_line(s, "preauthkeys", "list", "-n", "x")
        eq(line, 'hwctl: namespace "x" not found', "unknown namespace (keys)")
        rc, line = one_line(s, "frobnicate")
        eq((rc, line), (2, "hwctl: unknown command \"frobnicate\": try 'hwctl --help'"),
           "unknown command")
        rc, line = one_line(s, "nodes", "frob")
        eq(rc, 2, "unknown subcommand")
        contains(line, 'hwctl: nodes: unknown command "frob": use one of list, register')
        rc, line = one_line(s, "nodes")
        eq(rc, 2, "missing subcommand")
        rc, line = one_line(s, "nodes", "list", "--frob")
        eq((rc, line), (2, "hwctl: nodes list: unknown option --frob: see 'hwctl nodes list "
                           "--help'"), "unknown option")
        rc, line = one_line(s, "apikeys", "list", "-n", "default")
        eq(rc, 2, "option of another command")
        contains(line, "-n/--namespace does not apply to this command")
        rc, line = one_line(s, "nodes", "list", "-o", "xml")
        contains(line, 'unknown output format "xml"')
        rc, line = one_line(s, "nodes", "expire", "-i")
        contains(line, "-i/--identifier needs a value")
        rc, line = one_line(s, "namespaces", "create")
        eq((rc, line), (2, "hwctl: namespaces create: NAME is required: usage: hwctl "
                           "namespaces create NAME"), "missing argument")
        rc, line = one_line(s, "namespaces", "list", "extra")
        contains(line, 'unexpected argument "extra"')
        rc, line = one_line(s)
        eq(line, "hwctl: missing command: try 'hwctl --help'", "no command")
    # A socket nobody listens on.
    missing = os.path.join(hwtest._scratch_dir(), "nobody.sock")
    rc, out, err = run_hwctl("--socket", missing, "namespaces", "list", ok=False)
    eq(rc, 1, "exit status")
    eq(err, "hwctl: cannot reach headwater at %s: is it running? (connect: No such file or "
            "directory)\n" % missing, "unreachable socket")
    eq(out, "", "nothing on stdout")


@case
def socket_lookup():
    with Server() as s:
        s.hwctl("namespaces", "create", "found")
        want = ["found"]
        names = lambda out: [r["Name"] for r in table(out)]  # noqa: E731
        # $HEADWATER_SOCKET
        _, out, _ = run_hwctl("namespaces", "list", env={"HEADWATER_SOCKET": s.socket})
        eq(names(out), want, "HEADWATER_SOCKET")
        # --socket wins over the environment.
        rc, _, err = run_hwctl("--socket", "/nonexistent/hw.sock", "namespaces", "list",
                               env={"HEADWATER_SOCKET": s.socket}, ok=False)
        contains(err, "/nonexistent/hw.sock")
        # -c CONFIG and $HEADWATER_CONFIG: unix_socket from the server's own config file.
        _, out, _ = run_hwctl("-c", s.config_path, "namespaces", "list")
        eq(names(out), want, "-c")
        _, out, _ = run_hwctl("namespaces", "list", "--config", s.config_path)
        eq(names(out), want, "--config after the command")
        _, out, _ = run_hwctl("namespaces", "list", env={"HEADWATER_CONFIG": s.config_path})
        eq(names(out), want, "HEADWATER_CONFIG")
        # The environment's socket wins over a config file.
        rc, _, err = run_hwctl("-c", s.config_path, "namespaces", "list", ok=False,
                               env={"HEADWATER_SOCKET": "/nonexistent/env.sock"})
        contains(err, "/nonexistent/env.sock")
        rc, _, err = run_hwctl("-c", "/nonexistent/config.yaml", "namespaces", "list",
                               ok=False)
        eq(err, "hwctl: cannot read config /nonexistent/config.yaml: No such file or directory: "
                "give the right file with -c, or the socket with --socket\n", "missing config")
        bad = os.path.join(s.dir, "bad.yaml")
        with open(bad, "w") as f:
            f.write("unix_socket: /x.sock\nlisten_addr: [1, 2]\n")
        rc, _, err = run_hwctl("-c", bad, "namespaces", "list", ok=False)
        eq(len(err.splitlines()), 1, "one line: %r" % err)
        check(err.startswith("hwctl: cannot use config %s:2: listen_addr" % bad), err)
        # ./data/headwater.sock, the `make run` default, from the current directory.
        work = os.path.join(s.dir, "work")
        os.makedirs(os.path.join(work, "data"))
        if os.path.exists("/etc/headwater/config.yaml"):
            skip("/etc/headwater/config.yaml exists here: it comes before ./data")
        _, _, err = run_hwctl("namespaces", "list", cwd=work, ok=False)
        contains(err, "/var/run/headwater/headwater.sock", "the last fallback")
        os.symlink(s.socket, os.path.join(work, "data", "headwater.sock"))
        _, out, _ = run_hwctl("namespaces", "list", cwd=work)
        eq(names(out), want, "./data/headwater.sock")


@case
def help_and_version():
    _, out, _ = run_hwctl("--help")
    for part in ["namespaces create", "nodes register", "preauthkeys create", "routes enable",
                 "apikeys expire", "--socket", "HEADWATER_SOCKET"]:
        contains(out, part, "hwctl --help")
    _, out, _ = run_hwctl("nodes", "--help")
    contains(out, "nodes rename")
    _, out, _ = run_hwctl("help", "nodes", "tag")
    contains(out, "-t, --tags TAGS")
    _, out, _ = run_hwctl("routes", "enable", "-h")
    contains(out, "-r, --route CIDR")
    missing = os.path.join(hwtest._scratch_dir(), "nobody.sock")
    _, out, _ = run_hwctl("--socket", missing, "version")
    check(out.startswith("hwctl "), out)
    contains(out, "cannot reach headwater at %s" % missing)
    with Server() as s:
        _, out, _ = s.hwctl("version")
        health = s.api("GET", "/api/v1/health")[1]
        contains(out, "server: headwater %s (database schema %d)"
                 % (health["version"], health["schema_version"]))
        v = s.hwctl_json("version")
        eq(v["server"]["status"], "ok", "json version")


@case
def concurrent_hwctl():
    with Server() as s:
        errors = []

        def worker(t):
            for i in range(10):
                try:
                    s.hwctl("namespaces", "create", "t%d-n%d" % (t, i))
                except Exception as e:  # collected, reported below
                    errors.append(str(e))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        eq(errors, [], "failed creates")
        names = [n["name"] for n in s.hwctl_json("namespaces", "list")]
        eq(len(names), 80, "namespaces listed")
        eq(len(set(names)), 80, "distinct")
        eq(len(set(n["id"] for n in s.hwctl_json("namespaces", "list"))), 80, "distinct ids")


@case
def values_survive_restart():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        s.hwctl("namespaces", "create", "other")
        n = s.register_node("default", "keeper")
        s.hwctl("nodes", "rename", "-i", n["id"], "kept")
        s.hwctl("nodes", "tag", "-i", n["id"], "-t", "tag:persist")
        s.add_routes(n["id"], ["192.168.7.0/24"])
        s.hwctl("routes", "enable", "-i", n["id"], "-r", "192.168.7.0/24")
        pak = s.hwctl_json("preauthkeys", "create", "-n", "other", "--reusable")
        api = s.hwctl_json("apikeys", "create")
        s.hwctl("apikeys", "expire", "-p", api["prefix"])
        before = {
            "ns": s.hwctl_json("namespaces", "list"),
            "nodes": s.hwctl_json("nodes", "list"),
            "routes": s.hwctl_json("routes", "list"),
            "pak": s.hwctl_json("preauthkeys", "list"),
            "api": s.hwctl_json("apikeys", "list"),
        }
        for how in ("restart", "kill -9"):
            if how == "restart":
                s.restart()
            else:
                s.kill9()
                s.start()
            after = {
                "ns": s.hwctl_json("namespaces", "list"),
                "nodes": s.hwctl_json("nodes", "list"),
                "routes": s.hwctl_json("routes", "list"),
                "pak": s.hwctl_json("preauthkeys", "list"),
                "api": s.hwctl_json("apikeys", "list"),
            }
            for k in before:
                # online/last_seen may legitimately differ; nothing else may.
                strip = lambda xs: [{f: v for f, v in x.items()  # noqa: E731
                                     if f not in ("online", "last_seen")} for x in xs]
                eq(strip(after[k]), strip(before[k]), "%s after %s" % (k, how))
        node = node_by_id(s, n["id"])
        eq((node["name"], node["tags"], node["routes"]["enabled"]),
           ("kept", ["tag:persist"], ["192.168.7.0/24"]), "node details")
        check(pak["prefix"] in [k["prefix"] for k in after["pak"]], "pre-auth key kept")


# ---------------------------------------------------------------- policy check

CHECK_POLICY = """{
  // what an admin checks in CI before deploying
  "groups": {"group:eng": ["alice@", "bob@"]},
  "tagOwners": {"tag:db": ["group:eng"]},
  "hosts": {"db": "10.0.0.5"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432", "db:22"]},
    {"action": "accept", "src": ["carol"], "dst": ["db:443"]},
  ],
  "tests": [
    {"src": "alice@", "accept": ["tag:db:5432"], "deny": ["tag:db:80"]},
  ],
}
"""


def policy_file(name, text):
    path = os.path.join(hwtest._scratch_dir(), name)
    with open(path, "w") as f:
        f.write(text)
    return path


def stale_socket():
    """A socket file nobody listens on any more (connect: connection refused)."""
    import socket
    path = os.path.join(hwtest._scratch_dir(), "stale-%d.sock" % os.getpid())
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    return path


@case
def policy_check_without_a_server():
    good = policy_file("good.hujson", CHECK_POLICY)
    missing = os.path.join(hwtest._scratch_dir(), "nobody.sock")
    for sock in (missing, stale_socket()):
        rc, out, err = run_hwctl("--socket", sock, "policy", "check", "-f", good)
        eq(out, "Policy is valid (checked locally: the server at %s did not answer, so "
                "namespace names were not checked).\n" % sock, "stdout")
        eq(err, "", "stderr")
    _, out, _ = run_hwctl("--socket", missing, "-o", "json", "policy", "check", "-f", good)
    v = json.loads(out)
    eq((v["valid"], v["checked_locally"], v["namespaces_checked"], v["socket"]),
       (True, True, False, missing), "json answer")
    contains(v["why"], "cannot reach headwater at %s" % missing)
    # No -s and nothing found: the system socket, absent here (unless a real server runs).
    if not os.path.exists("/var/run/headwater/headwater.sock") and \
            not os.path.exists("/etc/headwater/config.yaml"):
        _, out, _ = run_hwctl("policy", "check", "-f", good)
        contains(out, "checked locally: the server at /var/run/headwater/headwater.sock")

    def fails(name, text, want):
        path = policy_file(name, text)
        rc, out, err = run_hwctl("--socket", missing, "policy", "check", "-f", path, ok=False)
        eq(rc, 1, "exit status for %s" % name)
        eq(out, "", "stdout for %s" % name)
        eq(err, "hwctl: %s:%s\n" % (path, want), "error for %s" % name)

    fails("syntax.hujson", '{\n  "acls": [\n    {"action": "accept" "src": ["*"], "dst": ["*:*"]},\n  ],\n}\n',
          "3: '}' expected near '\"src\"'")
    fails("undefined.hujson",
          '{\n  "groups": {"group:eng": ["alice@"]},\n  "acls": [\n'
          '    {"action": "accept", "src": ["group:ops"], "dst": ["*:*"]},\n  ],\n}\n',
          '4: acls[0].src[0]: group "group:ops" is not defined in "groups"')
    path = policy_file("failing-test.hujson", CHECK_POLICY.replace('"deny": ["tag:db:80"]',
                                                                     '"deny": ["tag:db:5432"]'))
    rc, out, err = run_hwctl("--socket", missing, "policy", "check", "-f", path, ok=False)
    eq(rc, 1, "exit status for a failing test")
    eq(err, 'hwctl: %s:11: tests[0].deny[0]: test failed: "alice@" -> "tag:db:5432": '
            'expected denied, got accepted\n' % path, "error for a failing test")
    rc, _, err = run_hwctl("--socket", missing, "policy", "check", ok=False)
    eq(rc, 2, "no -f")
    contains(err, "-f/--file is required")


@case
def policy_check_with_a_server():
    good = policy_file("good.hujson", CHECK_POLICY)
    with Server() as s:
        # The server checks the bare name "carol" against its namespaces: there is none.
        rc, line = one_line(s, "policy", "check", "-f", good)
        eq(rc, 1, "exit status")
        check(line.startswith("hwctl: %s:8: acls[1].src[0]" % good), line)
        contains(line, '"carol"')
        s.hwctl("namespaces", "create", "carol")
        _, out, err = s.hwctl("policy", "check", "-f", good)
        eq((out, err), ("Policy is valid.\n", ""), "checked by the server")
        eq(s.hwctl_json("policy", "check", "-f", good), {"valid": True}, "json from the server")
        s.hwctl("namespaces", "destroy", "carol", "--force")
        # --local does not ask the server, so it does not know carol is gone.
        _, out, _ = s.hwctl("policy", "check", "-f", good, "--local")
        eq(out, "Policy is valid (checked locally (--local), so namespace names were not "
                "checked).\n", "--local")
        v = s.hwctl_json("policy", "check", "--local", "-f", good)
        eq((v["valid"], v["checked_locally"], v.get("socket")), (True, True, None), "--local json")
        # --local is an option of check only.
        rc, line = one_line(s, "policy", "set", "-f", good, "--local")
        eq(rc, 2, "--local is only for check")


hwtest.main()
