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
import threading
import time

from derpclient import RECV_PACKET, SEND_PACKET, DerpClient, frame
from relayctl import HWRELAY, Cases, Relay, http_get

RATE = 200_000          # bytes/s of frame payload the flooder may send
BURST = 256 * 1024      # big enough for the fast pair's 1,000 small packets
WINDOW = 3.0            # seconds the flooder floods


def write_rate_config(path, rate, burst):
    with open(path, "w") as f:
        json.dump({"PerClientRateLimitBytesPerSec": rate, "PerClientRateBurstBytes": burst}, f)


class Sink:
    """Reads RecvPackets on a thread and counts their payload bytes (src key + data,
    the same length as the SendPacket payload the limit charges)."""

    def __init__(self, client):
        self.client = client
        self.bytes = 0
        self.packets = []
        self.keep = False
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            self.client.sock.settimeout(30)
            while True:
                t, payload = self.client.read_frame()
                if t == RECV_PACKET:
                    self.bytes += len(payload)
                    if self.keep:
                        self.packets.append((time.monotonic(), payload[32:]))
        except Exception as e:   # the test closes the socket to stop this thread
            self.error = e


class Flooder:
    """Sends SendPackets to dst as fast as the relay takes them, until stopped."""

    def __init__(self, client, dst, size=1000):
        self.client = client
        one = frame(SEND_PACKET, dst + b"\x00" * size)
        self.batch = one * 64
        self.sent = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            self.client.sock.settimeout(None)
            while True:
                self.client.send_raw(self.batch)
                self.sent += len(self.batch)
        except (OSError, ValueError):
            pass   # stop() shut the socket down

    def stop(self):
        try:
            self.client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(10)


def connect(relay, **kw):
    c = DerpClient(relay.port, **kw)
    c.expect_server_info()
    return c


def measure_flood(relay, websocket=False, tls=False, window=WINDOW):
    """Bytes the flooder's peer got in the window, and how the fast pair's 1,000
    packets fared meanwhile: (flood_bytes, delivered, worst_latency_s)."""
    sink_c = connect(relay, tls=tls)
    sink = Sink(sink_c)
    flood_c = connect(relay, websocket=websocket, tls=tls)
    a = connect(relay, tls=tls)
    b = connect(relay, tls=tls)
    b_sink = Sink(b)
    b_sink.keep = True
    try:
        start = time.monotonic()
        flooder = Flooder(flood_c, sink_c.pub)
        time.sleep(window / 3)   # the flooder is well over its burst by now
        # 20 in flight at a time: the relay's queue per receiver is 32 packets deep,
        # as derper's, so a pair sending faster than it reads loses some anyway.
        sent_at = {}
        end = time.monotonic() + 20
        for i in range(1000):
            while i - len(b_sink.packets) >= 20 and time.monotonic() < end:
                time.sleep(0.001)
            sent_at[i] = time.monotonic()
            a.send_packet(b.pub, struct.pack(">I", i) + b"p" * 60)
        while len(b_sink.packets) < 1000 and time.monotonic() < end:
            time.sleep(0.02)
        left = start + window - time.monotonic()
        if left > 0:
            time.sleep(left)
        flood_bytes = sink.bytes
        elapsed = time.monotonic() - start
        flooder.stop()
        worst = 0.0
        for at, data in b_sink.packets:
            worst = max(worst, at - sent_at[struct.unpack(">I", data[:4])[0]])
        return flood_bytes, elapsed, len(b_sink.packets), worst, flooder.sent
    finally:
        for c in (sink_c, flood_c, a, b):
            c.close()


def check_flood(flood_bytes, elapsed, delivered, worst, sent, rate=RATE, burst=BURST):
    bound = 2 * (rate * elapsed + burst)
    if delivered != 1000:
        raise AssertionError("the fast pair got %d of 1000 packets while a client flooded" % delivered)
    if worst > 5:
        raise AssertionError("the fast pair's packets took up to %.1fs" % worst)
    if flood_bytes > bound:
        raise AssertionError("the flooder's peer got %d bytes in %.1fs, over 2x(limit+burst)=%d"
                             % (flood_bytes, elapsed, bound))
    if flood_bytes < rate * elapsed / 3:
        raise AssertionError("the flooder's peer got only %d bytes in %.1fs at %d bytes/s"
                             % (flood_bytes, elapsed, rate))


def rate_relay(*extra, certmode="http"):
    r = Relay(*extra, certmode=certmode)
    return r


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
        res = measure_flood(relay, websocket=websocket, tls=tls)
        check_flood(*res)
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
        flood_bytes, elapsed, delivered, _, _ = measure_flood(relay, window=2.0)
        bound = 2 * (RATE * elapsed + BURST)
        if delivered != 1000:
            raise AssertionError("the fast pair got %d of 1000" % delivered)
        if flood_bytes <= bound:
            raise AssertionError("still limited after the reload: %d bytes in %.1fs" % (flood_bytes, elapsed))
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
    cases.run("relay_limits_bad_values", test_bad_limits_refused_at_start)
    cases.run("relay_accept_connection_limit", test_accept_limit_closes_excess)
    cases.run("relay_bootstrap_dns", test_bootstrap_dns_serves_names)
    return 1 if cases.failed else 0


if __name__ == "__main__":
    sys.exit(main())
