#!/usr/bin/env python3
"""`make bench`: headwater under a swarm of simulated nodes (bench/swarm.c), on 127.0.0.1.

Starts headwater on a temp dir (as tests/integration/hwtest.Server does: free port, SQLite,
unix socket, no DERP), creates a namespace with a reusable pre-auth key and a second one
with an ephemeral key for the registration burst, runs build/bench/swarm against it, and
restarts the server (SIGTERM, then the same command on the same database) when the swarm
asks, for the mass-reconnect phase. Prints the swarm's JSON lines, its table, and how the
numbers compare with the scale targets. Everything is stopped and removed at the end.

    python3 bench/run.py [--build build] [--nodes 1000] [--concurrency 100] [--burst N]
                         [--parse scan|jansson] [--changes LIST] [--phase-timeout S] [--json FILE]
                         [--no-frame-cache] [--start-policy]

Numbers, not a test: the exit status is 0 when the run completed, whatever the numbers.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The goal the numbers are read against (10,000 nodes on one 2-core machine).
TARGETS = {
    "p99_ms": 1000.0,
    "p100_ms": 2000.0,
    "rss_mib": 1024.0,
    "idle_cpu_pct": 5.0,
    "reg_per_s": 1000.0,
    "reconnect_s": 60.0,
}

# An allow-all policy in Headscale's format, for the policy change when the server has one.
POLICY = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}
# With --start-policy the server runs under POLICY from the start, and the policy change
# puts this one in force instead: the same peers, a different packet filter for every node.
POLICY_CHANGED = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]},
                           {"action": "accept", "src": ["bench@"], "dst": ["bench@:22"], "proto": "tcp"}]}


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024 // 1024
    except (OSError, ValueError, IndexError):
        pass
    return "%s, %d cores, %d GiB, Linux %s" % (model, os.cpu_count() or 0, mem, platform.release())


def raise_fd_limit():
    # headwater and the swarm inherit it: each holds one socket per node.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def verdicts(results):
    """One line per target: the measured value and whether it meets it."""
    lines = []

    def line(what, value, ok):
        lines.append("  %-44s %-22s %s" % (what, value, "ok" if ok else "MISSED"))

    for r in results:
        ph = r.get("phase")
        if ph == "change" and not r.get("skipped"):
            # headwater announces a node offline only after a grace period (10 s) by
            # design: for that kind the target applies from the first node that heard it.
            base = r.get("first_ms") or 0 if r["kind"] == "offline" else 0
            for key, label in (("p99_ms", "99%% of nodes < %.0f ms"), ("p100_ms", "100%% of nodes < %.0f ms")):
                v = r.get(key)
                if base and v is not None:
                    shown = "%.0f ms after the first" % (v - base)
                else:
                    shown = "%.0f ms" % v if v is not None else "not reached"
                line("%s: %s" % (r["kind"], label % TARGETS[key]), shown,
                     v is not None and v - base < TARGETS[key])
        elif ph in ("burst", "register"):
            v = r.get("reg_per_s")
            line("%s: >= %.0f registrations/s" % (ph, TARGETS["reg_per_s"]),
                 "%.0f/s" % v if v is not None else "-", v is not None and v >= TARGETS["reg_per_s"])
        elif ph == "idle":
            v = r.get("server_cpu_pct")
            line("idle server CPU < %.0f%%" % TARGETS["idle_cpu_pct"],
                 "%.2f%%" % v if v is not None else "-", v is not None and v < TARGETS["idle_cpu_pct"])
        elif ph == "restart":
            v = r.get("p100_ms")
            line("mass reconnect of all < %.0f s" % TARGETS["reconnect_s"],
                 "%.1f s" % (v / 1000) if v is not None else "not all back",
                 v is not None and v / 1000 < TARGETS["reconnect_s"])
    rss = [r["server_rss_mib"] for r in results if r.get("server_rss_mib") is not None]
    if rss:
        line("server RSS < %.0f MiB (max seen)" % TARGETS["rss_mib"], "%.0f MiB" % max(rss),
             max(rss) < TARGETS["rss_mib"])
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=100, help="dials+registrations in flight")
    ap.add_argument("--burst", type=int, default=None, help="burst size (default: --nodes)")
    ap.add_argument("--parse", default="scan", choices=("scan", "jansson"))
    ap.add_argument("--changes", default=None)
    ap.add_argument("--idle", type=int, default=10)
    ap.add_argument("--no-restart", action="store_true")
    ap.add_argument("--reconnect-timeout", type=int, default=None, help="seconds (default: 120, 300 above 5,000 nodes)")
    ap.add_argument("--phase-timeout", type=int, default=None,
                    help="seconds for the burst and register phases (the swarm's default: 300)")
    ap.add_argument("--deadline", type=int, default=None, help="hard stop in seconds")
    ap.add_argument("--json", default=None, help="also write the JSON lines here")
    ap.add_argument("--log-level", default="info", help="headwater's log level")
    ap.add_argument("--no-frame-cache", action="store_true",
                    help="the swarm inflates and scans every block frame of every full map itself, "
                         "also those it already read byte for byte for another node")
    ap.add_argument("--start-policy", action="store_true",
                    help="run every phase under an allow-all policy (per-node peer sets and filters)")
    args = ap.parse_args()

    build = os.path.join(ROOT, args.build)
    os.environ["HW_BUILD"] = build
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import hwtest  # after HW_BUILD is set

    swarm = os.path.join(build, "bench", "swarm")
    if not os.access(swarm, os.X_OK):
        print("bench: %s is missing: run make first" % swarm, file=sys.stderr)
        return 1
    limit = raise_fd_limit()
    n = args.nodes
    burst = n if args.burst is None else args.burst
    deadline = args.deadline or max(300, n // 10 + 300)
    if n + burst + 100 > limit:
        print("bench: %d nodes plus a burst of %d need more than the file limit %d; "
              "the burst is made smaller" % (n, burst, limit), file=sys.stderr)
        burst = max(0, limit - n - 100)

    print("machine: %s" % machine())
    # policy.mode database: `hwctl policy set` works, and until the policy change the
    # server runs without a policy, as the other phases expect.
    server = hwtest.Server(config={"log": {"level": args.log_level}, "policy": {"mode": "database"}})
    proc = None
    results = []
    policy_path = None
    try:
        server.hwctl("namespaces", "create", "bench")
        server.hwctl("namespaces", "create", "burst")
        key = server.hwctl_json("preauthkeys", "create", "-n", "bench", "--reusable", "-e", "24h")["key"]
        burst_key = server.hwctl_json("preauthkeys", "create", "-n", "burst", "--reusable", "--ephemeral",
                                      "-e", "24h")["key"]
        argv = [swarm, "--server", "http://127.0.0.1:%d" % server.port, "--authkey", key,
                "-n", str(n), "--concurrency", str(args.concurrency),
                "--server-pid", str(server.proc.pid), "--hwctl", hwtest.HWCTL, "--socket", server.socket,
                "--parse", args.parse, "--idle", str(args.idle), "--deadline", str(deadline)]
        if burst > 0:
            argv += ["--burst", str(burst), "--burst-authkey", burst_key]
        if not args.no_restart:
            argv += ["--restart", "--reconnect-timeout",
                     str(args.reconnect_timeout or (300 if n > 5000 else 120))]
        if args.changes:
            argv += ["--changes", args.changes]
        if args.no_frame_cache:
            argv.append("--no-frame-cache")
        if args.phase_timeout:
            argv += ["--phase-timeout", str(args.phase_timeout)]
        rc, _, _ = hwtest.run_hwctl("--socket", server.socket, "policy", "--help", ok=None)
        if rc == 0:
            fd, policy_path = tempfile.mkstemp(prefix="hwbench-policy-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(POLICY, f)
            if args.start_policy:
                server.hwctl("policy", "set", "-f", policy_path)
                with open(policy_path, "w") as f:
                    json.dump(POLICY_CHANGED, f)
            argv += ["--policy-file", policy_path]
        shown = [a if a not in (key, burst_key) else "KEY" for a in argv]
        print("server: %s serve -c %s (pid %d)" % (hwtest.HEADWATER, server.config_path, server.proc.pid))
        print("swarm:  %s" % " ".join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in shown))
        sys.stdout.flush()

        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        out = open(args.json, "w") if args.json else None
        t_end = time.monotonic() + deadline + 60
        for line in proc.stdout:
            line = line.rstrip("\n")
            if not line.startswith("{"):
                print(line)
                continue
            try:
                r = json.loads(line)
            except ValueError:
                print(line)
                continue
            results.append(r)
            if out:
                out.write(line + "\n")
                out.flush()
            print(line)
            sys.stdout.flush()
            if r.get("phase") == "restart_ready":
                t0 = time.monotonic()
                server.stop(timeout=60)
                stopped = time.monotonic()
                start_ms = int(time.monotonic() * 1000)
                server.start(timeout=120)
                print("bench: server stopped in %.2f s, restarted as pid %d (ready after %.2f s)"
                      % (stopped - t0, server.proc.pid, time.monotonic() - stopped))
                proc.stdin.write("restarted %d %d\n" % (server.proc.pid, start_ms))
                proc.stdin.flush()
            if time.monotonic() > t_end:
                break
        try:
            rc = proc.wait(timeout=max(1, t_end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        if out:
            out.close()
        print("\ntargets (for 10,000 nodes; this run had %d):" % n)
        for v in verdicts(results):
            print(v)
        if rc != 0:
            print("bench: the swarm exited with status %d" % rc)
        return 0 if rc == 0 else 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close(check=False)
        if policy_path:
            os.unlink(policy_path)


if __name__ == "__main__":
    sys.exit(main())
