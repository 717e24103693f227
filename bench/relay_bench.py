#!/usr/bin/env python3
"""hwrelay numbers on loopback (not a test): packets/s and MB/s relayed for 1, 10 and
100 client pairs, the relay's own CPU time per packet, RSS per idle connected client at
1,000 clients, and a flooding client beside a well-behaved pair with and without a
per-client rate limit. Usage: python3 bench/relay_bench.py [--build build] [--only flood]"""
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
    ap.add_argument("--only", default="pairs,idle,flood", help="sections to run: pairs,idle,flood")
    ap.add_argument("--flood-limit", type=int, default=1000000, help="bytes/s for the limited flood run")
    args = ap.parse_args()
    sections = set(args.only.split(","))
    os.environ["HW_BUILD"] = os.path.join(ROOT, args.build)
    import relayctl  # after HW_BUILD is set
    relayctl.BUILD = os.environ["HW_BUILD"]
    relayctl.HWRELAY = os.path.join(relayctl.BUILD, "hwrelay")
    relayctl.DERP_PAIR = os.path.join(relayctl.BUILD, "bench", "derp_pair")

    relay = relayctl.Relay(stun=False)
    pid = relay.proc.pid
    print("relay on %s (pid %d)" % (relay.addr, pid))
    for pairs in ((1, 10, 100) if "pairs" in sections else ()):
        k = args.packets // (2 * pairs)
        c0 = cpu_seconds(pid)
        ok, out = relayctl.derp_pair("pairs", "-s", relay.addr, "-n", str(pairs), "-k", str(k), "-size", "1200",
                                     "-w", "32", timeout=600)
        used = cpu_seconds(pid) - c0
        line = out.splitlines()[0] if out else "(no output)"
        print("%s relay_cpu_s=%.2f relay_us_per_packet=%.2f %s" % (line, used, used * 1e6 / max(1, 2 * pairs * k),
                                                                   "" if ok else "FAILED"))
    for n in ((int(x) for x in args.idle.split(",")) if "idle" in sections else ()):
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
    if "flood" in sections:
        return flood_rows(relayctl, args.flood_limit)
    return 0


def flood_rows(relayctl, limit):
    """One client floods 1000-byte packets for 3 s while another pair sends 1,000 small
    ones (20 in flight): what the flooder's peer got, and the pair's worst latency."""
    import tempfile
    from derpclient import flood_beside_pair
    d = tempfile.mkdtemp(prefix="hwrelay-bench-")
    cfg = os.path.join(d, "rate.json")
    with open(cfg, "w") as f:
        f.write('{"PerClientRateLimitBytesPerSec": %d, "PerClientRateBurstBytes": %d}' % (limit, limit))
    for label, extra in (("no limit", ()), ("limit %d B/s" % limit, ("-rate-config", cfg))):
        relay = relayctl.Relay(*extra, stun=False)
        res = flood_beside_pair(relay.port)
        print("flood beside a pair, %s: flooder's peer got %.0f B/s; pair %d/1000 delivered, latency median "
              "%.2f ms, worst %.1f ms" % (label, res["flood_bytes"] / res["elapsed"], res["delivered"],
                                          res["median"] * 1000, res["worst"] * 1000))
        why = relay.stop()
        if why:
            print("relay did not stop cleanly: " + why)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
