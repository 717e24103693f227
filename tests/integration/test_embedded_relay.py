#!/usr/bin/env python3
"""The relay built into headwater (derp.server.*): /derp upgraded through the public
listener (plain and WebSocket), admission of the tailnet's own nodes only, STUN, the
probe pages, the server key file, and a clean SIGTERM with clients connected."""
import os
import re
import signal
import socket
import subprocess
import tempfile
import shutil
import time

import hwtest
from hwtest import (HEADWATER, SANITIZED, SLOW, Server, api_call, case, check, contains, eq,
                    skip)
from derpclient import (CLIENT_INFO, DerpClient, Refused, box_seal, check_flood_held, flood_beside_pair,
                        frame, keypair, public_key, stun_mapped_address, stun_request, ws_frame)
from relayctl import DERP_PAIR, http_get

REFUSAL = "refused: not a registered, unexpired node of this tailnet"


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        return u.getsockname()[1]


def derp_config(stun_port, **server):
    cfg = {"enabled": True, "region_id": 999, "region_code": "hw", "region_name": "Headwater test",
           "stun_listen_addr": "127.0.0.1:%d" % stun_port,
           # Relative: next to the config file, as Headscale resolves it.
           "private_key_path": "derp_server_private.key", "verify_clients": True}
    cfg.update(server)
    return {"derp": {"server": cfg}}


def relay_server(**server):
    stun_port = free_udp_port()
    s = Server(config=derp_config(stun_port, **server))
    s.stun_port = stun_port
    s.key_path = os.path.join(s.dir, "derp_server_private.key")
    return s


def node(s, name, namespace="default"):
    """A registered node whose private key the test holds."""
    priv, pub = keypair()
    n = s.register_node(namespace, hostname=name, node_key="nodekey:" + pub.hex())
    return priv, n


def admitted(port, priv, websocket=False):
    c = DerpClient(port, priv=priv, websocket=websocket)
    eq(c.expect_server_info().get("version"), 2, "ServerInfo version")
    return c


def exchange(a, b, sizes=(1, 100, 1200)):
    for size in sizes:
        data = os.urandom(size)
        a.send_packet(b.pub, data)
        eq(b.recv_packet(), (a.pub, data), "a -> b, %d bytes" % size)
        data = os.urandom(size)
        b.send_packet(a.pub, data)
        eq(a.recv_packet(), (b.pub, data), "b -> a, %d bytes" % size)


def wait_log(s, text, count=1, timeout=5):
    end = time.monotonic() + timeout * SLOW
    while time.monotonic() < end:
        if s.log_text().count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("log never had %d x %r: %s" % (count, text, s.log_tail()))


@case
def upgrade_answer_and_key_file():
    with relay_server(verify_clients=False) as s:
        c = DerpClient(s.port, send_client_info=False)
        eq(c.status_line, "HTTP/1.1 101 Switching Protocols", "status")
        eq(c.headers.get("upgrade"), "DERP", "Upgrade")
        eq(c.headers.get("connection", "").lower(), "upgrade", "Connection")
        eq(c.headers.get("derp-version"), "2", "Derp-Version")
        # Headscale's key file: "privkey:<hex>", mode 0600, made on first start.
        eq(os.stat(s.key_path).st_mode & 0o777, 0o600, "key file mode")
        with open(s.key_path) as f:
            text = f.read()
        m = re.fullmatch(r"privkey:([0-9a-f]{64})\s*", text)
        check(m, "key file holds %r" % text)
        pub = public_key(bytes.fromhex(m.group(1)))
        eq(c.headers.get("derp-public-key"), pub.hex(), "Derp-Public-Key")
        eq(c.server_pub, pub, "ServerKey frame")
        c.close()
        # Bytes sent right behind the request head (a client that already knows the key)
        # reach the relay: libmicrohttpd hands them over with the socket.
        for websocket in (False, True):
            priv, mine = keypair()
            msg = b'{"version":2,"CanAckPings":true}'
            nonce = os.urandom(24)
            info = frame(CLIENT_INFO, mine + nonce + box_seal(msg, nonce, pub, priv))
            head = b"GET /derp HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
            if websocket:
                head += (b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Protocol: derp\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                info = ws_frame(info)
            else:
                head += b"Upgrade: DERP\r\n\r\n"
            raw = socket.create_connection(("127.0.0.1", s.port), timeout=5 * SLOW)
            raw.sendall(head + info)
            c = DerpClient.__new__(DerpClient)   # adopt the socket mid-stream
            c.sock, c.priv, c.pub, c.websocket = raw, priv, mine, websocket
            c.rbuf, c.stream, c.ws_closed, c.ws_control = b"", b"", None, []
            check(c._read_head().startswith("HTTP/1.1 101"), "101")
            t, payload = c.read_frame()
            eq(t, 1, "ServerKey")
            c.server_pub = pub
            eq(c.expect_server_info().get("version"), 2, "pipelined ClientInfo (websocket=%s)" % websocket)
            c.close()
        # The same key after a restart.
        s.restart()
        c = DerpClient(s.port, send_client_info=False)
        eq(c.server_pub, pub, "ServerKey after restart")
        c.close()


@case
def nodes_of_the_tailnet_exchange_packets():
    with relay_server() as s:
        s.hwctl("namespaces", "create", "default")
        ka, _ = node(s, "alpha")
        kb, _ = node(s, "beta")
        a = admitted(s.port, ka)
        b = admitted(s.port, kb)
        exchange(a, b, sizes=(1, 1200, 65536))
        a.ping()
        # Every DERP packet size and a burst keep their order.
        for i in range(200):
            a.send_packet(b.pub, i.to_bytes(4, "big") * 10)
        for i in range(200):
            eq(b.recv_packet()[1], i.to_bytes(4, "big") * 10, "packet %d" % i)
        a.close()
        b.close()


@case
def unknown_key_is_refused_with_one_log_line():
    with relay_server() as s:
        s.hwctl("namespaces", "create", "default")
        ka, _ = node(s, "alpha")
        stranger = DerpClient(s.port)
        stranger.expect_closed()
        wait_log(s, REFUSAL, 1)
        eq(s.log_text().count(REFUSAL), 1, "log lines for one refusal")
        # Its packets never reach a node.
        a = admitted(s.port, ka)
        stranger2 = DerpClient(s.port)
        stranger2.send_packet(a.pub, b"let me in")
        stranger2.expect_closed()
        a.ping()   # nothing but the pong arrives
        wait_log(s, REFUSAL, 2)


@case
def expired_node_is_refused_on_its_next_connection():
    with relay_server() as s:
        s.hwctl("namespaces", "create", "default")
        ka, na = node(s, "alpha")
        kb, _ = node(s, "beta")
        a = admitted(s.port, ka)
        b = admitted(s.port, kb)
        exchange(a, b, sizes=(10,))
        a.close()
        s.hwctl("nodes", "expire", "-i", str(na["id"]))
        again = DerpClient(s.port, priv=ka)
        again.expect_closed()
        wait_log(s, REFUSAL, 1)
        # The other node is unaffected.
        b.ping()


@case
def verify_clients_off_admits_anyone():
    with relay_server(verify_clients=False) as s:
        a = admitted(s.port, None)
        b = admitted(s.port, None)
        exchange(a, b, sizes=(50,))


@case
def per_client_rate_limit_holds_a_flooder():
    # derp.server.per_client_rate_limit_bytes_per_sec: the same limit as hwrelay's
    # -rate-config, on sockets libmicrohttpd upgraded (plain and WebSocket).
    rate, burst = 200_000, 256 * 1024
    with relay_server(verify_clients=False, per_client_rate_limit_bytes_per_sec=rate,
                      per_client_rate_burst_bytes=burst) as s:
        wait_log(s, "each client may send 200000 bytes/s, bursts of up to 262144 bytes")
        for websocket in (False, True):
            check_flood_held(flood_beside_pair(s.port, websocket=websocket), rate, burst)


@case
def stun_answers_with_the_senders_address():
    with relay_server() as s:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        u.settimeout(2 * SLOW)
        txid = os.urandom(12)
        u.sendto(stun_request(txid), ("127.0.0.1", s.stun_port))
        resp, _ = u.recvfrom(1500)
        eq(stun_mapped_address(resp, txid), u.getsockname(), "XOR-MAPPED-ADDRESS")
        eq(len(resp), 32, "answer length (derper's)")
        # Junk is ignored, not reflected.
        u.settimeout(0.3)
        u.sendto(b"\x00\x01junk" + os.urandom(30), ("127.0.0.1", s.stun_port))
        try:
            u.recvfrom(1500)
            raise AssertionError("answered junk")
        except socket.timeout:
            pass
        u.close()


@case
def probe_and_captive_portal_pages():
    with relay_server() as s:
        for path in ("/derp/probe", "/derp/latency-check"):
            for method in ("GET", "HEAD"):
                st, h, body = http_get(s.port, path, method=method)
                eq((st, h.get("access-control-allow-origin"), body), (200, "*", b""), method + " " + path)
        st, _, body = http_get(s.port, "/derp/probe", method="POST")
        eq(st, 405, "POST probe")
        contains(body.decode(), "bogus probe method")
        st, h, body = http_get(s.port, "/derp")
        eq(st, 426, "/derp without Upgrade")
        eq(body, b"DERP requires connection upgrade\n", "426 body")
        st, h, _ = http_get(s.port, "/derp", headers={"Upgrade": "h2c", "Connection": "Upgrade"})
        eq(st, 426, "/derp with a foreign Upgrade")
        st, h, body = http_get(s.port, "/generate_204", headers={"X-Tailscale-Challenge": "ts_node-1.example:x"})
        eq(st, 204, "/generate_204")
        eq(h.get("x-tailscale-response"), "response ts_node-1.example:x", "challenge answer")
        contains(h.get("cache-control", ""), "no-store")
        st, h, _ = http_get(s.port, "/generate_204", headers={"X-Tailscale-Challenge": "bad challenge!"})
        check("x-tailscale-response" not in h, "a bad challenge is not echoed: %r" % h)


@case
def relay_off_serves_no_derp_pages():
    with Server() as s:
        for path in ("/derp", "/derp/probe", "/generate_204"):
            st, _, _ = http_get(s.port, path)
            eq(st, 404, path)


@case
def websocket_derp_carries_the_same_exchange():
    with relay_server() as s:
        s.hwctl("namespaces", "create", "default")
        ka, _ = node(s, "browser")
        kb, _ = node(s, "native")
        kc, _ = node(s, "browser2")
        a = admitted(s.port, ka, websocket=True)
        eq(a.headers.get("sec-websocket-protocol"), "derp", "subprotocol")
        eq(a.headers.get("upgrade", "").lower(), "websocket", "Upgrade")
        b = admitted(s.port, kb)
        # 65536 bytes crosses several WebSocket messages each way.
        exchange(a, b, sizes=(1, 1200, 65536))
        c = admitted(s.port, kc, websocket=True)
        exchange(a, c, sizes=(300,))
        a.ping()
        # A WebSocket ping is answered with a pong carrying its payload.
        a.send_wire(ws_frame(b"hello", opcode=9))
        a.ping(b"87654321")
        check((10, b"hello") in a.ws_control, "no WebSocket pong: %r" % a.ws_control)
        # An unknown key is refused over WebSocket too.
        DerpClient(s.port, websocket=True).expect_closed()
        wait_log(s, REFUSAL, 1)


@case
def websocket_malformed_frame_closes_only_that_connection():
    with relay_server(verify_clients=False) as s:
        a = admitted(s.port, None, websocket=True)
        b = admitted(s.port, None)
        # Unmasked client frame: a protocol error (close code 1002).
        a.send_wire(ws_frame(b"\x04\x00\x00\x00\x00", mask=False))
        try:
            a.expect_closed()
        except AssertionError:
            raise
        check(a.ws_closed in (None, 1002), "close code %r" % a.ws_closed)
        # A text message is not DERP either.
        t = admitted(s.port, None, websocket=True)
        t.send_wire(ws_frame(b"hello", opcode=1))
        t.expect_closed()
        # A DERP frame too large inside valid WebSocket framing.
        g = admitted(s.port, None, websocket=True)
        g.send_raw(b"\x04\xff\xff\xff\xff" + b"\x00" * 64)
        g.expect_closed()
        b.ping()
        c = admitted(s.port, None, websocket=True)
        exchange(b, c, sizes=(10,))


@case
def websocket_handshake_checks():
    with relay_server() as s:
        base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Protocol": "derp",
                "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        h = dict(base)
        h["Sec-WebSocket-Version"] = "8"
        st, hdrs, _ = http_get(s.port, "/derp", headers=h)
        eq((st, hdrs.get("sec-websocket-version")), (400, "13"), "old version")
        h = dict(base)
        h["Sec-WebSocket-Key"] = "short"
        st, _, _ = http_get(s.port, "/derp", headers=h)
        eq(st, 400, "bad key")
        h = dict(base)
        h["Connection"] = "keep-alive"
        st, _, _ = http_get(s.port, "/derp", headers=h)
        eq(st, 426, "no Connection: Upgrade")
        # "Upgrade: websocket" without the derp subprotocol is plain DERP (old clients).
        c = DerpClient(s.port, send_client_info=False, headers={})
        c.close()


@case
def bulk_exchange_without_loss():
    with relay_server() as s:
        s.hwctl("namespaces", "create", "default")
        ka, _ = node(s, "alpha")
        kb, _ = node(s, "beta")
        p = subprocess.run([DERP_PAIR, "pairs", "-s", "127.0.0.1:%d" % s.port, "-n", "1", "-k", "5000",
                            "-key", ka.hex(), "-key2", kb.hex()],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120 * SLOW)
        out = p.stdout.decode(errors="replace")
        check(p.returncode == 0 and "lost=0 reordered=0" in out and "received=10000" in out, out)
        # A pair of strangers gets nothing through.
        p = subprocess.run([DERP_PAIR, "pairs", "-s", "127.0.0.1:%d" % s.port, "-n", "1", "-k", "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60 * SLOW)
        check(p.returncode != 0, "strangers relayed: %s" % p.stdout.decode(errors="replace"))


@case
def sigterm_with_clients_connected_exits_promptly():
    with relay_server() as s:
        s.hwctl("namespaces", "create", "default")
        ka, _ = node(s, "alpha")
        kb, _ = node(s, "beta")
        a = admitted(s.port, ka)
        b = admitted(s.port, kb, websocket=True)
        exchange(a, b, sizes=(10,))
        half = DerpClient(s.port, send_client_info=False)   # mid-handshake
        start = time.monotonic()
        rc = s.stop(timeout=10)
        took = time.monotonic() - start
        eq(rc, 0, "exit status")
        check(took < 5 * SLOW, "shutdown took %.1fs" % took)
        for c in (a, b, half):
            c.sock.settimeout(5)
            try:
                while True:
                    c.read_frame()
            except (Refused, ConnectionResetError):
                pass
        log = s.log_text()
        contains(log, "closing 3 connection(s)")
        contains(log, "stopped")


@case
def same_key_as_noise_is_refused():
    s = relay_server()
    try:
        s.stop()
        with open(s.settings["noise"]["private_key_path"]) as f:
            noise = f.read()
        with open(s.key_path, "w") as f:
            f.write(noise)
        try:
            s.start()
            raise AssertionError("started with the Noise key as DERP key")
        except AssertionError as e:
            contains(str(e), "same key as noise.private_key_path")
    finally:
        s.close(check=False)


@case
def taken_stun_port_stops_a_configured_server():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        s = Server(start=False, config=derp_config(port))
        try:
            try:
                s.start()
                raise AssertionError("started although the STUN port is taken")
            except AssertionError as e:
                contains(str(e), "derp.server.stun_listen_addr 127.0.0.1:%d" % port)
                contains(str(e), "Address already in use")
        finally:
            s.close(check=False)


def _port_free(kind, port):
    with socket.socket(socket.AF_INET, kind) as t:
        if kind == socket.SOCK_STREAM:
            # As headwater binds: connections of an earlier run in TIME_WAIT don't count.
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            t.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@case
def make_run_default_starts_even_with_stun_port_taken():
    """`make run`: no config file, ./data, 127.0.0.1:8080, relay on, STUN 127.0.0.1:3478.
    A taken 3478 is a warning there, not a failure (a configured server stops)."""
    if os.path.exists("/etc/headwater/config.yaml"):
        skip("/etc/headwater/config.yaml exists: headwater would read it")
    if not _port_free(socket.SOCK_STREAM, 8080):
        skip("127.0.0.1:8080 is taken")
    holder = None
    stun_free = _port_free(socket.SOCK_DGRAM, 3478)
    d = tempfile.mkdtemp(prefix="hw-run-")
    try:
        for taken in ([False, True] if stun_free else [True]):
            if taken and stun_free:
                holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                holder.bind(("127.0.0.1", 3478))
            log_path = os.path.join(d, "log-%s.txt" % taken)
            with open(log_path, "w") as log:
                p = subprocess.Popen([HEADWATER, "serve"], cwd=d, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, env=hwtest._hermetic_env(),
                                     preexec_fn=hwtest._die_with_parent)
            try:
                sock = os.path.join(d, "data", "headwater.sock")
                end = time.monotonic() + 10 * SLOW
                ready = False
                while time.monotonic() < end and p.poll() is None and not ready:
                    try:
                        ready = api_call(sock, "GET", "/api/v1/health", timeout=2)[0] == 200
                    except OSError:
                        time.sleep(0.05)
                # The banner follows the start, which health can answer a moment before.
                while True:
                    with open(log_path) as f:
                        text = f.read()
                    if not ready or "DERP relay " in text or time.monotonic() > end:
                        break
                    time.sleep(0.05)
                check(ready, "make run default did not come up: %s" % text[-2000:])
                st, h, _ = http_get(8080, "/derp/probe")
                eq(st, 200, "probe on the default listener")
                if taken:
                    contains(text, "runs without STUN")
                    contains(text, "no STUN (udp 127.0.0.1:3478 is taken)")
                else:
                    contains(text, "DERP relay      http://127.0.0.1:8080/derp, STUN on udp 127.0.0.1:3478")
                    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    u.bind(("127.0.0.1", 0))
                    u.settimeout(2 * SLOW)
                    txid = os.urandom(12)
                    u.sendto(stun_request(txid), ("127.0.0.1", 3478))
                    resp, _ = u.recvfrom(1500)
                    eq(stun_mapped_address(resp, txid), u.getsockname(), "STUN on 3478")
                    u.close()
                eq(os.stat(os.path.join(d, "data", "derp_server_private.key")).st_mode & 0o777, 0o600,
                   "default key file")
            finally:
                p.send_signal(signal.SIGTERM)
                rc = p.wait(10 * SLOW)
                with open(log_path) as f:
                    hwtest._check_sanitizer(f.read(), "headwater (make run default)")
                eq(rc, 0, "exit status")
    finally:
        if holder:
            holder.close()
        shutil.rmtree(d, ignore_errors=True)


hwtest.main()
