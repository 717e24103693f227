#!/usr/bin/env python3
"""TCP throughput through WireGuard tunnels between two network namespaces (root only).

    python3 bench/wg_bench.py [--time 10] [--build build] [--only NAME,...]

Every pair runs in fresh namespaces over the same kind of veth link, one after another,
with iperf3 (-t TIME, one stream) in both directions:
  wggo-wggo        wireguard-go <-> wireguard-go (the Debian package), MTU 1420
  hwc-wggo         hwclient wg  <-> wireguard-go, MTU 1420
  hwc-hwc          hwclient wg  <-> hwclient wg, MTU 1420
  hwc-derp         two `hwclient up --tun` nodes through headwater's built-in DERP
                   relay in a third namespace (TUN MTU 1280)
Prints a table: Mbit/s each way, and the CPU seconds the WireGuard processes used.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))


def iperf(nn, client_ns, server_ns, addr, seconds, reverse=False):
    srv = nn.popen(server_ns, ["iperf3", "-s", "-1", "-B", addr], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    nn.wait_for(lambda: nn.run(server_ns, "ss", "-ltn", check=False).stdout.count(":5201") > 0, 10,
                "iperf3 server")
    argv = ["iperf3", "-c", addr, "-t", seconds, "-J"] + (["-R"] if reverse else [])
    out = nn.run(client_ns, *argv, timeout=seconds + 60).stdout
    srv.wait(10)
    r = json.loads(out)
    return r["end"]["sum_received"]["bits_per_second"] / 1e6


def cpu_of(pids):
    from procstat import cpu_seconds
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, ValueError):
            pass
    return total


def wg_pair(kind_a, kind_b, seconds):
    from netns import Netns
    from wgpair import Side, start_hwclient, start_wggo
    d = tempfile.mkdtemp(prefix="hwwgb-")
    try:
        with Netns() as nn:
            a = Side(nn, "a", "10.77.0.1", 51820, "10.78.0.1", "fd78::1")
            b = Side(nn, "b", "10.77.0.2", 51821, "10.78.0.2", "fd78::2")
            nn.veth(a.ns, "10.77.0.1/24", b.ns, "10.77.0.2/24")
            for side, peer, kind in ((a, b, kind_a), (b, a, kind_b)):
                (start_wggo if kind == "wggo" else start_hwclient)(side, peer, d)
            nn.run(a.ns, "ping", "-c", "1", "-W", "5", b.tun4)
            pids = [a.proc.pid, b.proc.pid]
            cpu0 = cpu_of(pids)
            up = iperf(nn, a.ns, b.ns, b.tun4, seconds)
            down = iperf(nn, a.ns, b.ns, b.tun4, seconds, reverse=True)
            return up, down, cpu_of(pids) - cpu0
    finally:
        shutil.rmtree(d, ignore_errors=True)


def derp_pair(seconds):
    import hwtest
    from dptopo import SERVER_IP, NsClient, server_config, topology
    from netns import Netns
    with Netns() as nn:
        netns, a_ns, b_ns = topology(nn)
        port = 8080 + os.getpid() % 1000
        server = hwtest.Server(config=server_config(port, 3478), wrap=["ip", "netns", "exec", netns])
        clients = []
        try:
            server.hwctl("namespaces", "create", "bench")
            key = server.hwctl_json("preauthkeys", "create", "-n", "bench", "--reusable")["key"]
            for name, ns in (("a", a_ns), ("b", b_ns)):
                clients.append(NsClient(server, name, key=key, ns=ns, env={"TS_DEBUG_USE_DERP_HTTP": "1"},
                                        login_server="http://%s:%d" % (SERVER_IP, port),
                                        extra=["--port", "0", "--tun", nn.ifname("t")]))
            for c in clients:
                c.wait_running(timeout=20)
            ip_b = clients[1].ips()[0]
            nn.wait_for(lambda: nn.run(a_ns, "ping", "-c", "1", "-W", "2", ip_b, check=False).returncode == 0,
                        30, "ping through DERP")
            pids = [c.proc.pid for c in clients] + [server.proc.pid]
            cpu0 = cpu_of(pids)
            up = iperf(nn, a_ns, b_ns, ip_b, seconds)
            down = iperf(nn, a_ns, b_ns, ip_b, seconds, reverse=True)
            return up, down, cpu_of(pids) - cpu0
        finally:
            for c in clients:
                c.close(check_log=False)
            server.close(check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time", type=int, default=10, help="seconds per iperf3 run")
    ap.add_argument("--build", default=os.environ.get("HW_BUILD", os.path.join(ROOT, "build")))
    ap.add_argument("--only", default="", help="comma-separated names")
    args = ap.parse_args()
    os.environ["HW_BUILD"] = os.path.abspath(args.build)
    for tool in ("iperf3", "wireguard-go", "wg", "ping"):
        if not shutil.which(tool):
            sys.exit("wg_bench: %s is not installed (make deps)" % tool)
    if os.geteuid() != 0:
        sys.exit("wg_bench: needs root (network namespaces, TUN)")
    runs = [("wggo-wggo", lambda: wg_pair("wggo", "wggo", args.time)),
            ("hwc-wggo", lambda: wg_pair("hwclient", "wggo", args.time)),
            ("hwc-hwc", lambda: wg_pair("hwclient", "hwclient", args.time)),
            ("hwc-derp", lambda: derp_pair(args.time))]
    only = set(filter(None, args.only.split(",")))
    print("%-10s %12s %12s %10s" % ("pair", "a->b Mbit/s", "b->a Mbit/s", "CPU s"))
    for name, fn in runs:
        if only and name not in only:
            continue
        t0 = time.monotonic()
        try:
            up, down, cpu = fn()
            print("%-10s %12.0f %12.0f %10.1f" % (name, up, down, cpu), flush=True)
        except Exception as e:  # one failed pair does not hide the others' numbers
            print("%-10s failed after %.0fs: %s" % (name, time.monotonic() - t0, str(e)[:300]), flush=True)


if __name__ == "__main__":
    main()
