#!/usr/bin/env python3
"""headwater serving HTTPS itself (tls_cert_path / tls_key_path) and hwclient logging in
to an https:// login server: the ts2021 upgrade and Noise inside TLS, certificates checked
against the system roots (here: SSL_CERT_FILE naming the test's own CA)."""
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request

import hwtest
from hwtest import HEADWATER, Server, case, check, contains, eq
import hwnet
from hwnet import Net


def make_cert(d, name="server", san="IP:127.0.0.1,DNS:localhost"):
    """A self-signed certificate (its own CA) for 127.0.0.1: (cert path, key path)."""
    cert, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=headwater test", "-addext", "subjectAltName=" + san,
                    "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return cert, key


def tls_server(cert, key, **extra):
    s = Server(start=False, config=extra)
    s.settings["tls_cert_path"] = cert
    s.settings["tls_key_path"] = key
    s.settings["server_url"] = "https://127.0.0.1:%d" % s.port
    s.write_config()
    s.start()
    return s


def tls_pair(net, server, cert):
    """Two hwclients logged in to the https:// server, trusting its certificate."""
    k = net.authkey("default")
    url = "https://127.0.0.1:%d" % server.port
    env = {"SSL_CERT_FILE": cert}
    return (net.client("tls-a", key=k, login_server=url, env=env),
            net.client("tls-b", key=k, login_server=url, env=env))


class CertDir:
    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="hw-tls-")
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


def https_get(port, path, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    with urllib.request.urlopen("https://127.0.0.1:%d%s" % (port, path), context=ctx,
                                timeout=10 * hwtest.SLOW) as r:
        return r.status, r.read()


@case
def key_and_health_over_https():
    with CertDir() as cd:
        cert, key = make_cert(cd.dir)
        s = tls_server(cert, key)
        try:
            status, body = https_get(s.port, "/key?v=130", cert)
            eq(status, 200, "GET /key over https")
            check(json.loads(body)["publicKey"].startswith("mkey:"), "publicKey in %r" % body)
            status, _ = https_get(s.port, "/health", cert)
            eq(status, 200, "GET /health over https")
            # Plain HTTP to the TLS listener gets no page.
            try:
                urllib.request.urlopen("http://127.0.0.1:%d/health" % s.port, timeout=5)
                raise AssertionError("plain HTTP answered on the TLS listener")
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            contains(s.log_text(), "listening on https://")
        finally:
            s.close()


@case
def hwclient_logs_in_over_https_and_sees_its_peer():
    with CertDir() as cd:
        cert, key = make_cert(cd.dir)
        s = tls_server(cert, key)
        with Net(server=s) as net:
            a, b = tls_pair(net, s, cert)
            a.wait_running()
            b.wait_running()
            a.wait_for(lambda st: "tls-b" in a.peers(st), what="tls-b in tls-a's netmap")
            b.wait_for(lambda st: "tls-a" in b.peers(st), what="tls-a in tls-b's netmap")
            # A change made by the admin still reaches the streams inside TLS.
            net.hwctl("nodes", "rename", "-i", str(b.node_id()), "tls-b-renamed")
            a.wait_for(lambda st: any(p.get("DNSName", "").startswith("tls-b-renamed")
                                      for p in a.peers(st).values()),
                       what="the rename at tls-a")


@case
def builtin_relay_over_https_carries_packets():
    """The built-in relay's /derp upgraded inside TLS: both nodes home there and
    exchange packets with `hwclient debug derp-send`."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        stun_port = u.getsockname()[1]
    with CertDir() as cd:
        cert, key = make_cert(cd.dir)
        s = tls_server(cert, key, derp={"server": {
            "enabled": True, "region_id": 999, "region_code": "hw", "region_name": "TLS test",
            "stun_listen_addr": "127.0.0.1:%d" % stun_port,
            "private_key_path": "derp_server_private.key", "verify_clients": True}})
        with Net(server=s) as net:
            a, b = tls_pair(net, s, cert)
            for c in (a, b):
                c.wait_running()

                def up(c=c):
                    _, out, _ = c.cli("debug", "derp-stats", "--json")
                    return [x for x in json.loads(out)["DERP"]["Connections"]
                            if x["RegionID"] == 999 and x["State"] == "up" and x["TLS"]]
                hwnet.wait_until(up, 15, "%s connected to region 999 over TLS" % c.hostname,
                                 interval=0.05)
            a.wait_for(lambda st: "tls-b" in a.peers(st), what="tls-b in tls-a's netmap")
            _, out, _ = hwnet.run_hwclient("debug", "derp-send", "tls-b", "--count", 200,
                                           "--size", 1200, "--json", "--statedir", a.dir,
                                           timeout=60)
            r = json.loads(out)
            eq((r.get("Sent"), r.get("Acked"), r.get("Problem")), (200, 200, None),
               "derp-send through the relay inside TLS")


@case
def hwclient_refuses_an_untrusted_certificate():
    with CertDir() as cd:
        cert, key = make_cert(cd.dir)
        other, _ = make_cert(cd.dir, name="other")
        s = tls_server(cert, key)
        with Net(server=s) as net:
            k = net.authkey("default")
            c = net.client("tls-x", key=k, login_server="https://127.0.0.1:%d" % s.port,
                           env={"SSL_CERT_FILE": other})
            c.wait_for(lambda st: "certificate" in json.dumps(st.get("Health") or []).lower()
                       or "certificate" in c.log_text().lower(),
                       what="a certificate error reported")
            eq(len(net.nodes()), 0, "nodes registered through an untrusted certificate")
            print("# " + [l for l in c.log_text().splitlines() if "certificate" in l.lower()][0], flush=True)


@case
def missing_or_wrong_files_refused_at_start():
    with CertDir() as cd:
        cert, key = make_cert(cd.dir)
        for settings, want in (
                ({"tls_cert_path": cert, "tls_key_path": os.path.join(cd.dir, "nope.key")},
                 "tls_key_path %s: cannot read" % os.path.join(cd.dir, "nope.key")),
                ({"tls_cert_path": key, "tls_key_path": key},
                 "tls_cert_path %s: not a PEM file holding a certificate" % key),
                ({"tls_cert_path": cert, "tls_key_path": cert},
                 "tls_key_path %s: not a PEM file holding a private key" % cert)):
            s = Server(start=False)
            s.settings.update(settings)
            s.write_config()
            p = subprocess.run([HEADWATER, "serve", "-c", s.config_path], cwd=s.dir,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=20 * hwtest.SLOW, text=True)
            eq(p.returncode, 1, "exit status with %s" % settings)
            contains(p.stdout, want)
            s.close()


if __name__ == "__main__":
    hwtest.main()
