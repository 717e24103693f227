#!/usr/bin/env python3
"""Throughput through `--tun=userspace`'s SOCKS5 proxy: a client on 127.0.0.1 downloads the
10 MB file of tests/integration/nstunlab.py's namespace server through the proxy, lwIP and a
real TUN device (the same setup as test_socks5.py, so WireGuard is not in the path). Reports
MB/s for single downloads over IPv4 and IPv6 and the aggregate of N parallel ones, with
nstun's CPU time. Needs root (network namespace, /dev/net/tun).

    python3 bench/socks5_bench.py [--build build] [--rounds 5] [--parallel 4,20]

Numbers, not a test."""
import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parallel", default="4,20")
    args = ap.parse_args()
    os.environ["HW_BUILD"] = os.path.join(ROOT, args.build)
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import nstunlab
    from nstunlab import FILE_PORT, FILE_SIZE, PEER4, PEER6, Lab, recv_all_sha
    from procstat import cpu_seconds

    mb = FILE_SIZE / 1e6
    with Lab() as lab:
        pid = lab.nstun.pid
        for fam, atyp, addr in (("IPv4", 1, PEER4), ("IPv6", 4, PEER6)):
            rates = []
            for _ in range(args.rounds):
                t0 = time.monotonic()
                s, rep = lab.socks_connect(atyp, addr, FILE_PORT)
                sha, n = recv_all_sha(s)
                s.close()
                dt = time.monotonic() - t0
                assert rep == 0 and sha == lab.sha and n == FILE_SIZE
                rates.append(mb / dt)
            rates.sort()
            print("single %s: median %.0f MB/s (%.0f Mbit/s), best %.0f MB/s over %d x %.0f MB"
                  % (fam, rates[len(rates) // 2], rates[len(rates) // 2] * 8, rates[-1],
                     args.rounds, mb))
        for n_par in [int(x) for x in args.parallel.split(",") if x]:
            errors = []

            def one():
                try:
                    s, rep = lab.socks_connect(1, PEER4, FILE_PORT)
                    sha, n = recv_all_sha(s)
                    s.close()
                    if rep != 0 or sha != lab.sha:
                        errors.append("bad transfer")
                except Exception as e:
                    errors.append(repr(e))

            cpu0 = cpu_seconds(pid)
            t0 = time.monotonic()
            threads = [threading.Thread(target=one) for _ in range(n_par)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            dt = time.monotonic() - t0
            cpu = cpu_seconds(pid) - cpu0
            print("parallel %d: %.0f MB/s aggregate (%.0f MB in %.2f s), nstun CPU %.2f s%s"
                  % (n_par, n_par * mb / dt, n_par * mb, dt, cpu,
                     ", errors: %s" % errors[:3] if errors else ""))
    print("nstun packet counters:", lab.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
