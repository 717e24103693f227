#!/usr/bin/env python3
"""The DERP map clients receive: read from derp.paths (Headscale's YAML format), sent in
the first map, and pushed to connected clients when the file changes; configtest checks
the files too."""
import os
import shutil
import signal
import subprocess
import tempfile

from hwnet import Net
from hwtest import HEADWATER, Server, case, check, contains, eq

REGION = """regions:
  901:
    regionid: 901
    regioncode: lab
    regionname: Lab relay
    nodes:
      - name: 901a
        regionid: 901
        hostname: 127.0.0.1
        ipv4: 127.0.0.1
        stunport: 3478
        derpport: 3340
"""

SECOND = """  902:
    regionid: 902
    regioncode: home
    regionname: Home line
    nodes:
      - name: 902a
        regionid: 902
        hostname: home.example.net
        ipv6: "2001:db8::10"
        derpport: 443
"""


def regions(client):
    return sorted(client.cli_netmap().get("DERPMap", {}).get("Regions", {}).keys())


@case
def derp_paths_reach_clients_and_changes_are_pushed():
    tmp = tempfile.mkdtemp(prefix="hw-derp-")
    derp_file = os.path.join(tmp, "derp.yaml")
    with open(derp_file, "w") as f:
        f.write(REGION)
    with Net(config={"derp": {"paths": [derp_file], "auto_update_enabled": True,
                              "update_frequency": "1s"}}) as net:
        key = net.authkey("lab")
        a = net.client("a1", key)
        a.wait_running(timeout=15)
        eq(regions(a), ["901"], "regions in the first map")
        node = a.cli_netmap()["DERPMap"]["Regions"]["901"]["Nodes"][0]
        eq((node["HostName"], node["DERPPort"], node["IPv4"]), ("127.0.0.1", 3340, "127.0.0.1"), "node fields")

        with open(derp_file, "a") as f:
            f.write(SECOND)
        a.wait_for(lambda st: regions(a) == ["901", "902"], timeout=15,
                   what="the new region pushed to the connected client")
        contains(net.server.log_text(), "DERP map changed", "server log")
    shutil.rmtree(tmp, ignore_errors=True)


@case
def sighup_rereads_the_derp_map():
    tmp = tempfile.mkdtemp(prefix="hw-derp-")
    derp_file = os.path.join(tmp, "derp.yaml")
    with open(derp_file, "w") as f:
        f.write(REGION)
    with Net(config={"derp": {"paths": [derp_file], "auto_update_enabled": False}}) as net:
        a = net.client("a1", net.authkey("lab"))
        a.wait_running(timeout=15)
        eq(regions(a), ["901"], "regions in the first map")
        with open(derp_file, "a") as f:
            f.write(SECOND)
        net.server.proc.send_signal(signal.SIGHUP)
        a.wait_for(lambda st: regions(a) == ["901", "902"], timeout=15,
                   what="the new region after SIGHUP")
        check(net.server.proc.poll() is None, "headwater still running after SIGHUP")
        contains(net.server.log_text(), "received SIGHUP", "server log")
    shutil.rmtree(tmp, ignore_errors=True)


@case
def configtest_checks_derp_files():
    s = Server(start=False)
    bad = os.path.join(s.dir, "derp.yaml")
    with open(bad, "w") as f:
        f.write(REGION.replace("derpport: 3340", "derpport: lots"))
    s.settings["derp"]["paths"] = [bad]
    s.write_config()
    out = subprocess.run([HEADWATER, "configtest", "-c", s.config_path], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=20)
    eq(out.returncode, 1, "exit status")
    contains(out.stderr.decode(), bad + ":12:", "file and line of the bad port")
    s.close()


if __name__ == "__main__":
    import hwtest
    hwtest.main()
