#!/usr/bin/env python3
"""hwrelay's derper limits and /bootstrap-dns: a client over its -rate-config limit is
held to about that rate while another pair's packets keep flowing (plain DERP, WebSocket
and TLS), SIGHUP reloads the limit, -accept-connection-limit closes the excess on the TLS
listener, and /bootstrap-dns serves the -bootstrap-dns-names."""
import json
import os
import socket
import ssl
import struct
import sys
import time

from derpclient import PEER_GONE, DerpClient, check_flood_held, flood_beside_pair
from relayctl import HWRELAY, Cases, Relay, http_get

RATE = 200_000          # bytes/s of frame payload the flooder may send
BURST = 256 * 1024      # big enough for the fast pair's 1,000 small packets


def write_rate_config(path, rate, burst):
    with open(path, "w") as f:
        json.dump({"PerClientRateLimitBytesPerSec": rate, "PerClientRateBurstBytes": burst}, f)


def limited_relay(tmp_extra=(), certmode="http"):
    import tempfile
    d = tempfile.mkdtemp(prefix="hwrelay-rate-")
    path = os.path.join(d, "rate.json")
    write_rate_config(path, RATE, BURST)
    extra = ["-rate-config", path] + list(tmp_extra)
    if certmode != "http":
        extra += ["-hostname", "127.0.0.1"]
    return Relay(*extra, certmode=certmode, workdir=d), path


def run_flood_case(websocket=False, tls=False):
    relay, _ = limited_relay(certmode="ipself" if tls else "http")
    try:
        res = flood_beside_pair(relay.port, websocket=websocket, tls=tls)
        check_flood_held(res, RATE, BURST)
        if "rate config applied: client-rate=%d bytes/sec, client-burst=%d bytes" % (RATE, BURST) \
                not in relay.log_text():
            raise AssertionError("no 'rate config applied' line:\n" + relay.log_text()[-1000:])
    finally:
        err = relay.stop()
    if err:
        raise AssertionError(err)


def test_flooder_held_others_flow():
    run_flood_case()


def test_flooder_over_websocket_held():
    run_flood_case(websocket=True)


def test_flooder_over_tls_held():
    run_flood_case(tls=True)


def test_sighup_lifts_the_limit():
    relay, path = limited_relay()
    try:
        # Unlimited now: the same flood goes through far faster than the old bound.
        write_rate_config(path, 0, 0)
        relay.proc.send_signal(1)   # SIGHUP
        if not relay.wait_log("rate config applied: client-rate=0 bytes/sec, client-burst=0 bytes"):
            raise AssertionError("SIGHUP did not reload:\n" + relay.log_text()[-1000:])
        res = flood_beside_pair(relay.port, window=2.0)
        if res["delivered"] != 1000:
            raise AssertionError("the fast pair got %d of 1000" % res["delivered"])
        if res["flood_bytes"] <= 2 * (RATE * res["elapsed"] + BURST):
            raise AssertionError("still limited after the reload: %(flood_bytes)d bytes in %(elapsed).1fs" % res)
        # A broken file keeps the limits in place and says why.
        with open(path, "w") as f:
            f.write('{"PerClientRateLimitBytesPerSec": "fast"}')
        relay.proc.send_signal(1)
        if not relay.wait_log("rate config reload failed; the previous limits stay"):
            raise AssertionError("no failure line:\n" + relay.log_text()[-1000:])
        if "PerClientRateLimitBytesPerSec must be a whole number" not in relay.log_text():
            raise AssertionError("the reason is missing:\n" + relay.log_text()[-1000:])
        if relay.proc.poll() is not None:
            raise AssertionError("hwrelay exited on a bad reload")
    finally:
        err = relay.stop()
    if err:
        raise AssertionError(err)
    # Without -rate-config a reload (systemctl reload) is harmless.
    relay = Relay()
    try:
        relay.proc.send_signal(1)
        if not relay.wait_log("SIGHUP: nothing to reload"):
            raise AssertionError("no reload line:\n" + relay.log_text()[-1000:])
        status, _, _ = http_get(relay.port, "/generate_204")
        if status != 204:
            raise AssertionError("relay not serving after SIGHUP: %d" % status)
    finally:
        err = relay.stop()
    if err:
        raise AssertionError(err)


def test_reset_while_held_is_noticed():
    # 1 byte/s: once over its burst the flooder waits for hours. If it resets its
    # connection meanwhile, the relay must notice now (its peer gets PeerGone), not
    # when the wait ends.
    import tempfile
    d = tempfile.mkdtemp(prefix="hwrelay-rate-")
    path = os.path.join(d, "rate.json")
    write_rate_config(path, 1, 0)
    relay = Relay("-rate-config", path, workdir=d)
    try:
        sink = DerpClient(relay.port)
        sink.expect_server_info()
        flood = DerpClient(relay.port)
        flood.expect_server_info()
        for _ in range(2):
            flood.send_packet(sink.pub, b"\x00" * 60000)
        sink.recv_packet()   # the burst (65568 bytes) pays for the first
        sink.sock.settimeout(1)
        try:
            sink.recv_packet()
            raise AssertionError("the second packet got through at 1 byte/s")
        except socket.timeout:
            pass
        flood.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        flood.close()   # RST
        sink.sock.settimeout(5)
        while True:
            t, payload = sink.read_frame()
            if t == PEER_GONE and payload[:32] == flood.pub:
                break
        if not relay.wait_log("connection lost while its reads were paused"):
            raise AssertionError("no log line:\n" + relay.log_text()[-1000:])
        sink.close()
    finally:
        err = relay.stop()
    if err:
        raise AssertionError(err)


def start_fails(args, want):
    import subprocess
    import tempfile
    d = tempfile.mkdtemp(prefix="hwrelay-bad-")
    p = subprocess.run([HWRELAY, "-a", "127.0.0.1:0", "-certmode=http", "-c", os.path.join(d, "k"), "-stun=false",
                        "-http-port", "-1"] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    out = p.stdout.decode(errors="replace")
    if p.returncode == 0 or want not in out:
        raise AssertionError("want failure with %r, got %s: %s" % (want, p.returncode, out[-800:]))


def test_bad_limits_refused_at_start():
    import tempfile
    d = tempfile.mkdtemp(prefix="hwrelay-bad-")
    bad = os.path.join(d, "rate.json")
    with open(bad, "w") as f:
        f.write('{"PerClientRateLimitBytesPerSec": -5}')
    start_fails(["-rate-config", bad], "must be a whole number of bytes")
    with open(bad, "w") as f:
        f.write('{"PerClientRateLimitBytesPerSec": 5,')
    start_fails(["-rate-config", bad], "-rate-config %s:1:" % bad)
    start_fails(["-rate-config", os.path.join(d, "missing.json")], "missing.json")
    start_fails(["-accept-connection-limit", "fast"], "bad value for -accept-connection-limit: fast")
    start_fails(["-accept-connection-burst=-1"], "bad value for -accept-connection-burst=-1")
    start_fails(["-unpublished-bootstrap-dns-names", "a.example/b.example"], "rollout entries are not supported")


def tls_hello_answered(port):
    """Whether the relay completes a TLS handshake on a new connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                return True
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError):
        return False


def test_accept_limit_closes_excess():
    # Almost no refill: the burst, then refusals. Starting the relay costs one
    # connection (the harness checks that it listens).
    relay = Relay("-hostname", "127.0.0.1", "-accept-connection-limit", "0.001", "-accept-connection-burst", "4",
                  certmode="ipself")
    try:
        results = [tls_hello_answered(relay.port) for _ in range(8)]
        if results != [True] * 3 + [False] * 5:
            raise AssertionError("handshakes answered: %s" % results)
        if not relay.wait_log("refused by -accept-connection-limit"):
            raise AssertionError("no refusal logged:\n" + relay.log_text()[-1000:])
    finally:
        err = relay.stop()
    if err:
        raise AssertionError(err)
    # Plain HTTP is not limited (derper limits its TLS listener only), and says so.
    relay = Relay("-accept-connection-limit", "0.001", "-accept-connection-burst", "1")
    try:
        for _ in range(5):
            status, _, _ = http_get(relay.port, "/generate_204")
            if status != 204:
                raise AssertionError("plain HTTP request got %d" % status)
        if "apply to the TLS listener only" not in relay.log_text():
            raise AssertionError("no warning:\n" + relay.log_text()[-1000:])
    finally:
        err = relay.stop()
    if err:
        raise AssertionError(err)


def bootstrap(relay, q=None):
    path = "/bootstrap-dns" + ("?q=" + q if q else "")
    end = time.monotonic() + 10
    while True:
        status, hdrs, body = http_get(relay.port, path)
        if status != 200 or hdrs.get("content-type") != "application/json":
            raise AssertionError("%s: %d %s" % (path, status, hdrs))
        if body or time.monotonic() > end:
            return body
        time.sleep(0.05)   # the first lookup runs on its own thread


def test_bootstrap_dns_serves_names():
    # Names from /etc/hosts and literals: nothing leaves the machine.
    relay = Relay("-bootstrap-dns-names", "localhost,127.0.0.1", "-unpublished-bootstrap-dns-names", "127.0.0.3")
    try:
        got = json.loads(bootstrap(relay))
        if sorted(got) != ["127.0.0.1", "localhost"] or got["127.0.0.1"] != ["127.0.0.1"] or \
                "127.0.0.1" not in got["localhost"]:
            raise AssertionError("published answer: %r" % got)
        hidden = json.loads(bootstrap(relay, "127.0.0.3"))
        if hidden != {"127.0.0.3": ["127.0.0.3"]}:
            raise AssertionError("unpublished answer: %r" % hidden)
        if json.loads(bootstrap(relay, "elsewhere.example")) != got:
            raise AssertionError("an unknown q must get the published list")
    finally:
        err = relay.stop()
    if err:
        raise AssertionError(err)
    # No names: derper answers an empty body.
    relay = Relay()
    try:
        status, hdrs, body = http_get(relay.port, "/bootstrap-dns")
        if status != 200 or body != b"":
            raise AssertionError("no names: %d %r" % (status, body))
    finally:
        err = relay.stop()
    if err:
        raise AssertionError(err)


def main():
    cases = Cases()
    cases.run("relay_rate_limit_flooder_held_others_flow", test_flooder_held_others_flow)
    cases.run("relay_rate_limit_websocket", test_flooder_over_websocket_held)
    cases.run("relay_rate_limit_tls", test_flooder_over_tls_held)
    cases.run("relay_rate_limit_sighup_reload", test_sighup_lifts_the_limit)
    cases.run("relay_rate_limit_reset_while_held", test_reset_while_held_is_noticed)
    cases.run("relay_limits_bad_values", test_bad_limits_refused_at_start)
    cases.run("relay_accept_connection_limit", test_accept_limit_closes_excess)
    cases.run("relay_bootstrap_dns", test_bootstrap_dns_serves_names)
    return 1 if cases.failed else 0


if __name__ == "__main__":
    sys.exit(main())
