#!/usr/bin/env python3
"""hwrelay over TLS: the bare-IP self-signed certificate with its sha256-raw pin,
DERP handshakes through it, refusal without the pin, certmode=manual with SNI, and
a certificate replaced on disk being picked up without a restart."""
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from relayctl import Cases, Relay, derp_pair


def leaf_sha256(pem_path):
    with open(pem_path) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return hashlib.sha256(der).hexdigest()


def served_cert(port, server_hostname=None, cafile=None):
    """DER of the certificate the relay presents (verified against cafile if given)."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            der = s.getpeercert(binary_form=True)
            s.sendall(b"GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n")
            head = s.recv(200)
            assert head.startswith(b"HTTP/1.1 200"), head
            return der


def make_dns_cert(dirpath, name):
    """A CA-less self-signed certificate for a DNS name, with the openssl tool."""
    crt, key = os.path.join(dirpath, name + ".crt"), os.path.join(dirpath, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key + ".tmp", "-out", crt + ".tmp", "-days", "2", "-subj", "/CN=" + name,
                    "-addext", "subjectAltName=DNS:" + name], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    os.replace(key + ".tmp", key)
    os.replace(crt + ".tmp", crt)
    return crt


def main():
    cases = Cases()
    relay = Relay("-hostname", "127.0.0.1", certmode="ipself")
    crt = os.path.join(relay.dir, "certs", "127.0.0.1.crt")
    key = os.path.join(relay.dir, "certs", "127.0.0.1.key")
    pin = [None]

    def self_signed_ip_cert_and_pin_printed():
        assert os.path.exists(crt) and os.stat(key).st_mode & 0o777 == 0o600, "cert files"
        line = [l for l in relay.stdout_text().splitlines() if l.startswith("{")][0]
        node = json.loads(line)
        pin[0] = leaf_sha256(crt)
        assert node["CertName"] == "sha256-raw:" + pin[0], (node, pin[0])
        assert node["HostName"] == "127.0.0.1" and node["DERPPort"] == relay.port, node
        assert node["STUNPort"] == relay.stun_port, node
        # The IP SAN makes ordinary verification work with the cert as its own CA.
        der = served_cert(relay.port, server_hostname="127.0.0.1", cafile=crt)
        assert hashlib.sha256(der).hexdigest() == pin[0]

    def derp_over_tls_with_pin():
        ok, out = derp_pair("ping", "-s", relay.addr, "-tls", "-pin", pin[0])
        assert ok, out
        ok, out = derp_pair("pairs", "-s", relay.addr, "-tls", "-pin", pin[0], "-n", "2", "-k", "2000")
        assert ok and "lost=0 reordered=0" in out, out
        ok, out = derp_pair("peergone", "-s", relay.addr, "-tls", "-ca", crt)
        assert ok, out

    def refused_without_pin():
        ok, out = derp_pair("ping", "-s", relay.addr, "-tls")
        assert not ok and "TLS handshake" in out, out
        ok, out = derp_pair("ping", "-s", relay.addr, "-tls", "-pin", "00" * 32)
        assert not ok and "pin" in out, out

    def plain_http_refused_on_tls_port():
        s = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        s.sendall(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"HTTP/1.1 101"), data
        s.close()

    def restart_keeps_certificate():
        why = relay.stop()
        assert why is None, why
        again = Relay("-hostname", "127.0.0.1", certmode="ipself", workdir=relay.dir)
        try:
            assert leaf_sha256(crt) == pin[0], "certificate was replaced on restart"
            der = served_cert(again.port)
            assert hashlib.sha256(der).hexdigest() == pin[0]
        finally:
            why = again.stop()
        assert why is None, why

    cases.run("self_signed_ip_cert_and_pin_printed", self_signed_ip_cert_and_pin_printed)
    cases.run("derp_over_tls_with_pin", derp_over_tls_with_pin)
    cases.run("refused_without_pin", refused_without_pin)
    cases.run("plain_http_refused_on_tls_port", plain_http_refused_on_tls_port)
    cases.run("restart_keeps_certificate", restart_keeps_certificate)

    def manual_mode_sni_and_reload():
        if not shutil.which("openssl"):
            return "skip the openssl tool is not installed"
        work = tempfile.mkdtemp(prefix="hwrelay-manual-")
        certs = os.path.join(work, "certs")
        os.makedirs(certs)
        first = make_dns_cert(certs, "relay.test")
        r = Relay("-hostname", "relay.test", certmode="manual", workdir=work)
        try:
            der = served_cert(r.port, server_hostname="relay.test", cafile=first)
            assert hashlib.sha256(der).hexdigest() == leaf_sha256(first)
            ok, out = derp_pair("ping", "-s", r.addr, "-tls", "-ca", first, "-sni", "relay.test")
            assert ok, out
            try:
                served_cert(r.port, server_hostname="other.test")
                raise AssertionError("served a certificate for another name")
            except ssl.SSLError:
                pass
            # Replace the files: new connections get the new certificate, no restart.
            time.sleep(1.1)   # a new mtime, even on coarse file systems
            second = make_dns_cert(certs, "relay.test")
            want = leaf_sha256(second)
            end = time.monotonic() + 12
            while time.monotonic() < end:
                if hashlib.sha256(served_cert(r.port, server_hostname="relay.test")).hexdigest() == want:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError("new certificate not picked up")
            assert "reloaded certificate" in r.log_text()
        finally:
            why = r.stop()
        assert why is None, why

    def manual_mode_without_files_fails_clearly():
        work = tempfile.mkdtemp(prefix="hwrelay-nocert-")
        try:
            Relay("-hostname", "relay.test", certmode="manual", workdir=work)
            raise AssertionError("started without a certificate")
        except RuntimeError as e:
            assert "no usable certificate" in str(e), e

    cases.run("manual_mode_sni_and_reload", manual_mode_sni_and_reload)
    cases.run("manual_mode_without_files_fails_clearly", manual_mode_without_files_fails_clearly)
    return 1 if cases.failed else 0


if __name__ == "__main__":
    sys.exit(main())
