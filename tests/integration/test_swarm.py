"""bench/swarm against a real headwater: a small swarm registers, converges, sees each
kind of change and comes back after a server restart. Keeps the load generator from
rotting; the numbers themselves are `make bench`'s business."""
import json
import os
import subprocess
import time

import hwtest
from hwtest import Server, case, check, eq, main

SWARM = os.path.join(hwtest.BUILD, "bench", "swarm")


def run_swarm(s, *extra, restart=False, timeout=120):
    key = s.hwctl_json("preauthkeys", "create", "-n", "swarm", "--reusable", "-e", "1h")["key"]
    argv = [SWARM, "--server", "http://127.0.0.1:%d" % s.port, "--authkey", key,
            "--server-pid", str(s.proc.pid), "--hwctl", hwtest.HWCTL, "--socket", s.socket,
            "--deadline", str(90 * hwtest.SLOW), "-q"] + [str(a) for a in extra]
    if restart:
        argv.append("--restart")
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    results = []
    try:
        for line in p.stdout:
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            results.append(r)
            if r["phase"] == "restart_ready":
                s.stop()
                start_ms = int(time.monotonic() * 1000)
                s.start()
                p.stdin.write("restarted %d %d\n" % (s.proc.pid, start_ms))
                p.stdin.flush()
        rc = p.wait(timeout * hwtest.SLOW)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read()
    hwtest._check_sanitizer(err, "swarm")
    eq(rc, 0, "swarm exit status (stderr: %s)" % err.strip()[-500:])
    return {(r["phase"], r.get("kind")): r for r in results}


@case
def twenty_nodes_register_converge_and_follow_changes():
    with Server() as s:
        s.hwctl("namespaces", "create", "swarm")
        s.hwctl("namespaces", "create", "burst")
        burst_key = s.hwctl_json("preauthkeys", "create", "-n", "burst", "--reusable", "--ephemeral",
                                 "-e", "1h")["key"]
        res = run_swarm(s, "-n", 20, "--concurrency", 5, "--burst", 10, "--burst-authkey", burst_key,
                        "--idle", 1, "--changes", "join,endpoints,rename,leave", restart=True)
        burst = res[("burst", None)]
        eq((burst["registered"], burst["failed"]), (10, 0), "burst registrations")
        reg = res[("register", None)]
        eq((reg["registered"], reg["failed"], reg["live"], reg["converged"]), (20, 0, 20, 20),
           "registered, failed, live, converged")
        eq((reg["peers_min"], reg["peers_max"]), (19, 19), "peers seen by every node")
        check(reg["reg_per_s"] > 0 and reg["latency_ms_p99"] is not None, "registration numbers")
        check(res[("idle", None)]["server_cpu_s"] is not None, "server CPU read from /proc")
        for kind in ("join", "endpoints", "rename", "leave"):
            r = res[("change", kind)]
            check("skipped" not in r and r.get("error") is None, "%s: %s" % (kind, r))
            eq(r["applied"], r["nodes"], "%s: nodes that applied it" % kind)
            check(r["nodes"] >= 20 and r["p100_ms"] is not None and r["bytes_rx"] > 0, "%s: %s" % (kind, r))
        # the burst nodes logged out with an ephemeral key: only the main nodes remain
        names = [n["name"] for n in s.hwctl_json("nodes", "list")]
        eq(len(names), 20, "nodes left after the burst logout and the leave (%s)" % names)
        back = res[("restart", None)]
        eq((back["back"], back["nodes"], back["full_peer_lists"]), (20, 20, 20), "back after the restart")
        eq(back["stragglers"], [], "stragglers")
        # full maps went through the frame cache (the swarm's default; the first node's
        # map may be a single frame, when it is alone in the namespace)
        check(reg["frame_cache"]["maps"] >= 19, "full maps read through the frame cache: %s" % reg["frame_cache"])
        check(back["frame_cache"]["maps"] >= 20, "after the restart: %s" % back["frame_cache"])


def register_and_restart(nodes, *extra):
    with Server() as s:
        s.hwctl("namespaces", "create", "swarm")
        return run_swarm(s, "-n", nodes, "--concurrency", 10, "--idle", 1, "--changes", "none", *extra,
                         restart=True)


@case
def frame_cache_reuses_shared_blocks_and_changes_no_result():
    # 40 nodes: ids 1-40 span two blocks of 32 (TN_CHUNK), so every node's full map holds
    # one block shared with others, byte for byte, besides its own.
    results = {}
    for mode, extra in (("cache", ()), ("no-cache", ("--no-frame-cache",))):
        res = register_and_restart(40, *extra)
        reg, back = res[("register", None)], res[("restart", None)]
        eq((reg["registered"], reg["failed"], reg["live"], reg["converged"], reg["peers_min"], reg["peers_max"]),
           (40, 0, 40, 40, 39, 39), "%s: registered, failed, live, converged, peers" % mode)
        eq((back["back"], back["nodes"], back["full_peer_lists"], back["stragglers"]), (40, 40, 40, []),
           "%s: back after the restart" % mode)
        results[mode] = (reg, back)
    reg, back = results["cache"]
    fc = back["frame_cache"]
    check(fc["maps"] >= 40 and fc["hits"] > 0 and fc["json_bytes_skipped"] > 0,
          "the restart's full maps reuse shared blocks: %s" % fc)
    # (the register phase's hits depend on how joins and stream openings interleave)
    check(reg["frame_cache"]["maps"] >= 39, "the register phase's full maps went through it: %s" % reg["frame_cache"])
    eq(fc["fallbacks"], 0, "no full map left to the full decode")
    for r in results["no-cache"]:
        eq(r["frame_cache"], None, "--no-frame-cache: no cache counters")


main()
