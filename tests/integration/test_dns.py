#!/usr/bin/env python3
"""DNS as the clients receive it: `hwclient netmap -o json` ("DNS" is the DNSConfig the
server sent) and `hwclient status` (MagicDNS names) for each dns.* setting: MagicDNS with
base_domain, global and split nameservers, search domains, override_local_dns, static
extra_records, and extra_records_path changed while clients are connected (a change
reaches them; a broken file is logged and the last good records stay)."""
import json
import os
import subprocess
import time

from hwnet import Net, wait_until
from hwtest import HEADWATER, SLOW, Server, case, check, contains, eq, main

RECORD = {"name": "grafana.hw.test", "type": "A", "value": "100.64.0.3"}


def dns_of(client):
    return client.call("netmap")["DNS"]


def resolvers(dns, key):
    return [r["Addr"] for r in dns.get(key) or []]


@case
def dns_config_delivered_as_configured():
    cfg = {"dns": {"magic_dns": True, "base_domain": "hw.test", "override_local_dns": True,
                   "nameservers": {"global": ["9.9.9.9", "2620:fe::fe"],
                                   "split": {"corp.example": ["10.0.0.53", "10.0.0.54"]}},
                   "search_domains": ["lab.example"],
                   "extra_records": [RECORD]}}
    with Net(config=cfg) as net:
        key = net.authkey("lab")
        a = net.client("alpha", key)
        b = net.client("beta", key)
        for c in (a, b):
            c.wait_running(timeout=15)
        dns = dns_of(a)
        eq(resolvers(dns, "Resolvers"), ["9.9.9.9", "2620:fe::fe"], "global nameservers")
        eq(dns.get("FallbackResolvers"), None, "no fallback with override_local_dns")
        eq([r["Addr"] for r in dns["Routes"]["corp.example"]], ["10.0.0.53", "10.0.0.54"],
           "split DNS route")
        eq(dns["Routes"]["64.100.in-addr.arpa"], [], "reverse zone answered by MagicDNS")
        eq(dns["Domains"], ["hw.test", "lab.example"], "base domain first, then search domains")
        eq(dns.get("Proxied"), True, "MagicDNS")
        eq(dns["ExtraRecords"], [{"Name": RECORD["name"], "Type": "A", "Value": RECORD["value"]}],
           "extra records")
        # Every node is NAME.base_domain: the client's MagicDNS resolver serves peers' names.
        st = a.wait_for(lambda s: "beta" in a.peers(s), 5, what="beta as a peer")
        eq(a.peers(st)["beta"]["DNSName"], "beta.hw.test.", "peer's MagicDNS name")
        eq(st["Self"]["DNSName"], "alpha.hw.test.", "own MagicDNS name")
        eq(st["MagicDNSSuffix"], "hw.test", "MagicDNS suffix")
        eq(st["CurrentTailnet"]["MagicDNSEnabled"], True, "MagicDNS enabled")
        peer = [p for p in a.call("netmap")["Peers"] if p["Name"].startswith("beta.")][0]
        eq(peer["Name"], "beta.hw.test.", "Node.Name is the FQDN")
        # A rename shows under the new name.
        net.hwctl("nodes", "rename", "-i", b.node_id(), "gamma")
        a.wait_for(lambda s: any(p["DNSName"] == "gamma.hw.test." for p in s["Peer"].values()),
                   5, what="renamed peer")


@case
def magic_dns_off_keeps_local_resolvers():
    cfg = {"dns": {"magic_dns": False, "base_domain": "hw.test", "override_local_dns": False,
                   "nameservers": {"global": ["9.9.9.9"]}}}
    with Net(config=cfg) as net:
        key = net.authkey("lab")
        a = net.client("alpha", key)
        a.wait_running(timeout=15)
        dns = dns_of(a)
        eq(dns.get("Proxied"), None, "MagicDNS off")
        eq(resolvers(dns, "FallbackResolvers"), ["9.9.9.9"],
           "global nameservers only as a fallback without override_local_dns")
        eq(dns.get("Resolvers"), None, "no Resolvers")
        eq(dns.get("Routes"), None, "no reverse zones without MagicDNS")
        eq(a.status()["Self"]["DNSName"], "alpha.hw.test.", "names still carry base_domain")


@case
def extra_records_file_reloaded_on_change():
    records_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), "hw-dns-%d" % os.getpid())
    os.makedirs(records_dir, exist_ok=True)
    path = os.path.join(records_dir, "extra-records.json")
    try:
        with open(path, "w") as f:
            json.dump([RECORD], f)
        with Net(config={"dns": {"base_domain": "hw.test", "extra_records_path": path}}) as net:
            key = net.authkey("lab")
            a = net.client("alpha", key)
            b = net.client("beta", key)
            for c in (a, b):
                c.wait_running(timeout=15)
            eq([r["Name"] for r in dns_of(a)["ExtraRecords"]], ["grafana.hw.test"], "from file")

            # Rewritten in place: both clients get the new records.
            start = time.monotonic()
            with open(path, "w") as f:
                json.dump([RECORD, {"name": "db.hw.test", "type": "AAAA",
                                    "value": "fd7a:115c:a1e0::9"}], f)
            for c in (a, b):
                wait_until(lambda c=c: len(dns_of(c).get("ExtraRecords") or []) == 2, 5,
                           "two records at %s" % c.hostname, interval=0.02)
            print("# records file written -> both clients: %.0f ms"
                  % ((time.monotonic() - start) * 1000))
            eq(dns_of(a)["ExtraRecords"][1], {"Name": "db.hw.test", "Type": "AAAA",
                                              "Value": "fd7a:115c:a1e0::9"}, "AAAA record")

            # Broken: logged with the file and why; the clients keep the last good records.
            with open(path, "w") as f:
                f.write('[{"name": "x.hw.test", "type": "A", "value": "not-an-ip"}]')
            wait_until(lambda: "needs an IPv4 address" in net.server.log_text(), 5,
                       "the parse error in the log")
            log = net.server.log_text()
            contains(log, path, "the log names the file")
            contains(log, "keeping the previous 2 records", "the log says what is kept")
            eq(len(dns_of(a)["ExtraRecords"]), 2, "last good records kept")

            # Replaced by rename (how editors and config tools write): picked up too.
            tmp = path + ".new"
            with open(tmp, "w") as f:
                json.dump([{"name": "only.hw.test", "type": "A", "value": "100.64.0.9"}], f)
            os.rename(tmp, path)
            wait_until(lambda: [r["Name"] for r in dns_of(b).get("ExtraRecords") or []]
                       == ["only.hw.test"], 5, "the renamed-in file", interval=0.02)
    finally:
        for name in os.listdir(records_dir):
            os.unlink(os.path.join(records_dir, name))
        os.rmdir(records_dir)


@case
def missing_records_file_stops_the_start():
    s = Server(start=False, config={"dns": {"extra_records_path": "/nonexistent/records.json"}})
    try:
        p = subprocess.run([HEADWATER, "serve", "-c", s.config_path], cwd=s.dir,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=20 * SLOW)
        check(p.returncode != 0, "headwater started without its records file")
        contains(p.stderr + p.stdout, "dns.extra_records_path /nonexistent/records.json: cannot "
                 "open it", "the error names the key, the file and why")
    finally:
        s.close()


if __name__ == "__main__":
    main()
