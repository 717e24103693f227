#!/usr/bin/env python3
"""hwrelay numbers on loopback (not a test): packets/s and MB/s relayed for 1, 10 and
100 client pairs, the relay's own CPU time per packet, and RSS per idle connected
client at 1,000 clients. Usage: python3 bench/relay_bench.py [--build build]"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from procstat import cpu_seconds, rss_kib  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--packets", type=int, default=400000, help="total packets per run (both directions)")
    ap.add_argument("--idle", default="1000", help="comma-separated counts of idle clients to measure RSS with")
    args = ap.parse_args()
    os.environ["HW_BUILD"] = os.path.join(ROOT, args.build)
    import relayctl  # after HW_BUILD is set
    relayctl.BUILD = os.environ["HW_BUILD"]
    relayctl.HWRELAY = os.path.join(relayctl.BUILD, "hwrelay")
    relayctl.DERP_PAIR = os.path.join(relayctl.BUILD, "bench", "derp_pair")

    relay = relayctl.Relay(stun=False)
    pid = relay.proc.pid
    print("relay on %s (pid %d)" % (relay.addr, pid))
    for pairs in (1, 10, 100):
        k = args.packets // (2 * pairs)
        c0 = cpu_seconds(pid)
        ok, out = relayctl.derp_pair("pairs", "-s", relay.addr, "-n", str(pairs), "-k", str(k), "-size", "1200",
                                     "-w", "32", timeout=600)
        used = cpu_seconds(pid) - c0
        line = out.splitlines()[0] if out else "(no output)"
        print("%s relay_cpu_s=%.2f relay_us_per_packet=%.2f %s" % (line, used, used * 1e6 / max(1, 2 * pairs * k),
                                                                   "" if ok else "FAILED"))
    for n in (int(x) for x in args.idle.split(",")):
        rss0 = rss_kib(pid)
        p = subprocess.Popen([relayctl.DERP_PAIR, "idle", "-s", relay.addr, "-n", str(n), "-hold", "60"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = p.stdout.readline().decode().strip()
        time.sleep(1)
        rss1 = rss_kib(pid)
        p.stdin.close()
        p.wait(timeout=60)
        print("idle clients: %s; relay VmRSS %d KiB -> %d KiB: %.1f KiB per idle client" %
              (line, rss0, rss1, (rss1 - rss0) / n))
    why = relay.stop()
    if why:
        print("relay did not stop cleanly: " + why)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
