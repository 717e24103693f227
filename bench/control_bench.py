#!/usr/bin/env python3
"""headwater control-plane numbers on loopback (not a test): registrations per second over
separate ts2021 sessions, and how long a change takes to reach every one of N clients that
hold a map stream. Starts its own headwater on a temp dir (tests/integration/hwtest.py),
makes a namespace and a reusable pre-auth key, then runs build/bench/register_bench.

Usage: python3 bench/control_bench.py [--build build] [-n 500] [-c 32] [-f 100] [-r 5]
                                     [--unique-hostnames]"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from procstat import cpu_seconds, rss_kib  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("-n", type=int, default=500, help="registrations")
    ap.add_argument("-c", type=int, default=32, help="concurrent registrations")
    ap.add_argument("-f", type=int, default=100, help="clients holding a map stream")
    ap.add_argument("-r", type=int, default=5, help="rounds of changes")
    ap.add_argument("--unique-hostnames", action="store_true",
                    help="every node a host name of its own (default: all \"bench\", named "
                         "bench-N by the server)")
    args = ap.parse_args()
    os.environ["HW_BUILD"] = os.path.join(ROOT, args.build)
    import hwtest  # after HW_BUILD is set
    bench = os.path.join(hwtest.BUILD, "bench", "register_bench")
    s = hwtest.Server(config={"log": {"level": "warn"}})
    try:
        s.hwctl("namespaces", "create", "bench")
        key = s.hwctl_json("preauthkeys", "create", "-n", "bench", "--reusable", "-e", "2h")["key"]
        pid = s.proc.pid
        c0, rss0 = cpu_seconds(pid), rss_kib(pid)
        argv = [bench, "-s", "http://127.0.0.1:%d" % s.port, "-k", key, "-n", str(args.n),
                "-c", str(args.c), "-f", str(args.f), "-r", str(args.r), "-t", "300"]
        if args.unique_hostnames:
            argv.append("-u")
        print("$ %s" % " ".join(argv[:3] + ["-k", "KEY"] + argv[5:]), flush=True)
        p = subprocess.run(argv, timeout=600)
        print("headwater: %.2f s CPU during the run, RSS %d -> %d KiB (%d nodes stored, %d streaming)"
              % (cpu_seconds(pid) - c0, rss0, rss_kib(pid), args.n + args.r, args.f))
        return p.returncode
    finally:
        s.close(check=False)


if __name__ == "__main__":
    sys.exit(main())
