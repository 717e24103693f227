#!/usr/bin/env python3
"""hwrelay over plain HTTP on 127.0.0.1: HTTP routes, the captured derper sessions
replayed byte for byte, 10,000 packets without loss, PeerGone, duplicates, garbage,
a slow reader, STUN answers and the key file."""
import json
import os
import re
import socket
import struct
import sys
import time

from relayctl import FIXTURES, SANITIZED, Cases, Relay, derp_pair, http_get

HDR = 5


def read_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise RuntimeError("connection closed after %d of %d bytes" % (len(data), n))
        data += chunk
    return data


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        b = s.recv(1)
        if not b:
            raise RuntimeError("closed during HTTP head")
        data += b
    return data.decode()


def read_frame(s):
    hdr = read_exact(s, HDR)
    t, n = hdr[0], struct.unpack(">I", hdr[1:])[0]
    return t, hdr + read_exact(s, n)


def read_frame_skipping(s, skip=(6,)):
    while True:
        t, raw = read_frame(s)
        if t not in skip:
            return t, raw


def split_frames(b):
    out = []
    while b:
        n = struct.unpack(">I", b[1:5])[0]
        out.append(b[:HDR + n])
        b = b[HDR + n:]
    return out


def fixture_conn(d, who):
    for c in d["connections"]:
        if c["client"] == who:
            raw = bytes.fromhex(c["c2s_hex"])
            head_end = raw.index(b"\r\n\r\n") + 4
            return c, raw[:head_end], split_frames(raw[head_end:])
    raise KeyError(who)


def s2c_frame(c, type_name, nth=0):
    found = [f for f in c["frames"] if f["dir"] == "s2c" and f["type_name"] == type_name]
    return bytes.fromhex(found[nth]["frame_hex"])


def main():
    cases = Cases()
    with open(os.path.join(FIXTURES, "derp-session.json")) as f:
        derp_fx = json.load(f)
    with open(os.path.join(FIXTURES, "stun.json")) as f:
        stun_fx = json.load(f)

    relay = Relay()
    port = relay.port

    def http_routes():
        st, h, body = http_get(port, "/derp/probe")
        assert st == 200 and h.get("access-control-allow-origin") == "*" and body == b"", (st, h, body)
        st, h, _ = http_get(port, "/derp/latency-check", method="HEAD")
        assert st == 200 and h.get("access-control-allow-origin") == "*", (st, h)
        st, _, body = http_get(port, "/derp/probe", method="POST")
        assert st == 405 and b"bogus probe method" in body, (st, body)
        st, _, body = http_get(port, "/derp")
        assert st == 426 and body == b"DERP requires connection upgrade\n", (st, body)
        st, h, _ = http_get(port, "/generate_204", headers={"X-Tailscale-Challenge": "ts_relay.example-1:x"})
        assert st == 204 and h.get("x-tailscale-response") == "response ts_relay.example-1:x", h
        assert "no-store" in h.get("cache-control", ""), h
        assert "content-length" not in h, h
        st, h, _ = http_get(port, "/generate_204", headers={"X-Tailscale-Challenge": "bad challenge!"})
        assert st == 204 and "x-tailscale-response" not in h, h
        st, h, _ = http_get(port, "/generate_204", headers={"X-Tailscale-Challenge": "a" * 65})
        assert "x-tailscale-response" not in h, h
        st, _, body = http_get(port, "/robots.txt")
        assert st == 200 and body == b"User-agent: *\nDisallow: /\n", body
        st, h, body = http_get(port, "/")
        assert st == 200 and b"DERP" in body and h["content-type"].startswith("text/html"), (st, h)
        # A garbage request line gets a 400, not a crash.
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400"), "no 400"
        s.close()

    def upgrade_response():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /derp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: derp\r\nConnection: Upgrade\r\n\r\n")
        head = read_head(s)
        lines = head.split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols", lines
        assert "Upgrade: DERP" in lines and "Connection: Upgrade" in lines and "Derp-Version: 2" in lines, lines
        key = [l for l in lines if l.startswith("Derp-Public-Key: ")][0].split(": ")[1]
        assert re.fullmatch(r"[0-9a-f]{64}", key), key
        t, raw = read_frame(s)
        assert t == 1 and len(raw) == 45 and raw[5:13] == b"DERP\xf0\x9f\x94\x91" and raw[13:].hex() == key
        s.close()

    def key_file_created_0600():
        st = os.stat(relay.key_path)
        assert st.st_mode & 0o777 == 0o600, oct(st.st_mode)
        with open(relay.key_path) as f:
            k = json.load(f)
        assert re.fullmatch(r"privkey:[0-9a-f]{64}", k["PrivateKey"]), k

    def packets_10000_no_loss():
        ok, out = derp_pair("pairs", "-s", relay.addr, "-n", "1", "-k", "10000")
        assert ok and "lost=0 reordered=0" in out and "received=20000" in out, out

    def ten_pairs_concurrently():
        ok, out = derp_pair("pairs", "-s", relay.addr, "-n", "10", "-k", "1000", "-size", "300")
        assert ok and "received=20000" in out, out

    def unknown_destination_peer_gone_not_here():
        ok, out = derp_pair("nothere", "-s", relay.addr)
        assert ok, out

    def ping_pong():
        ok, out = derp_pair("ping", "-s", relay.addr)
        assert ok, out

    def peer_gone_disconnected():
        ok, out = derp_pair("peergone", "-s", relay.addr)
        assert ok, out

    def duplicate_key_newest_wins():
        ok, out = derp_pair("dup", "-s", relay.addr)
        assert ok, out

    def garbage_closes_only_that_connection():
        ok, out = derp_pair("garbage", "-s", relay.addr)
        assert ok, out

    def garbage_before_client_info():
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        read_head(s)
        read_frame(s)
        s.sendall(b"\x04\x00\x00\x00\x20" + b"\x00" * 32)  # SendPacket before ClientInfo
        assert s.recv(10) == b"", "relay kept a connection that skipped ClientInfo"
        s.close()
        # A ClientInfo box that does not open.
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        read_head(s)
        read_frame(s)
        s.sendall(b"\x02\x00\x00\x00\x60" + os.urandom(0x60))
        assert s.recv(10) == b"", "relay kept a connection with a forged ClientInfo"
        s.close()

    def slow_reader_does_not_stall_others():
        rss0 = relay.rss_kib()
        ok, out = derp_pair("slowreader", "-s", relay.addr, "-k", "20000", "-hold", "3")
        assert ok, out
        assert "disconnected: write timeout" in relay.log_text(), "slow reader not dropped"
        grew = relay.rss_kib() - rss0
        # 20000 x 1.2 KB were sent at it; the relay keeps only its bounded queues.
        assert SANITIZED or grew < 8 * 1024, "RSS grew by %d KiB" % grew

    def stun_answers_carry_source():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        u.settimeout(2)
        my_port = u.getsockname()[1]
        for i, pair in enumerate(stun_fx["pairs"]):
            req = bytes.fromhex(pair["request"]["hex"])
            u.sendto(req, ("127.0.0.1", relay.stun_port))
            resp, _ = u.recvfrom(1500)
            assert resp[:2] == b"\x01\x01" and resp[8:20] == req[8:20], "pair %d: header" % i
            assert len(resp) == 32 and resp[20:24] == b"\x00\x20\x00\x08" and resp[25] == 1, resp.hex()
            xport = struct.unpack(">H", resp[26:28])[0] ^ 0x2112
            ip = bytes(a ^ b for a, b in zip(resp[28:32], b"\x21\x12\xa4\x42"))
            assert (socket.inet_ntoa(ip), xport) == ("127.0.0.1", my_port), (ip, xport)
            # Same bytes derper sent, but for our port.
            want = bytearray(bytes.fromhex(pair["response"]["hex"]))
            want[26:28] = struct.pack(">H", my_port ^ 0x2112)
            assert resp == bytes(want), "pair %d differs from derper's answer" % i
        # Junk and near-misses get no answer at all.
        good = bytes.fromhex(stun_fx["pairs"][0]["request"]["hex"])
        u.settimeout(0.3)
        for junk in (b"hello", good[:-1] + bytes([good[-1] ^ 1]), good[:32], os.urandom(40)):
            u.sendto(junk, ("127.0.0.1", relay.stun_port))
            try:
                u.recvfrom(1500)
                raise AssertionError("answered junk %s" % junk.hex())
            except socket.timeout:
                pass
        u.close()

    for name, fn in [("http_routes", http_routes), ("upgrade_response", upgrade_response),
                     ("key_file_created_0600", key_file_created_0600),
                     ("packets_10000_no_loss", packets_10000_no_loss),
                     ("ten_pairs_concurrently", ten_pairs_concurrently),
                     ("unknown_destination_peer_gone_not_here", unknown_destination_peer_gone_not_here),
                     ("ping_pong", ping_pong), ("peer_gone_disconnected", peer_gone_disconnected),
                     ("duplicate_key_newest_wins", duplicate_key_newest_wins),
                     ("garbage_closes_only_that_connection", garbage_closes_only_that_connection),
                     ("garbage_before_client_info", garbage_before_client_info),
                     ("slow_reader_does_not_stall_others", slow_reader_does_not_stall_others),
                     ("stun_answers_carry_source", stun_answers_carry_source)]:
        cases.run(name, fn)

    def restart_keeps_key():
        st, _, _ = http_get(port, "/")
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        before = read_head(s).split("Derp-Public-Key: ")[1][:64]
        s.close()
        why = relay.stop()
        assert why is None, why
        again = Relay(workdir=relay.dir)
        try:
            s = socket.create_connection(("127.0.0.1", again.port), timeout=5)
            s.sendall(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
            after = read_head(s).split("Derp-Public-Key: ")[1][:64]
            s.close()
        finally:
            why = again.stop()
        assert before == after, (before, after)
        assert why is None, why

    cases.run("clean_exit_and_restart_keeps_key", restart_keeps_key)

    # The captured sessions, replayed against a relay holding derper's own key: the
    # server's frames must come back byte for byte (except the sealed ServerInfo,
    # whose nonce is random).
    def replay_captured_sessions():
        key_json = json.dumps({"PrivateKey": "privkey:" + derp_fx["keys"]["derper_private"]})
        r2 = Relay(key_json=key_json, stun=False)
        try:
            ca, a_head, a_frames = fixture_conn(derp_fx, "derpfix-A")
            cb, b_head, b_frames = fixture_conn(derp_fx, "derpfix-B")
            b = socket.create_connection(("127.0.0.1", r2.port), timeout=5)
            b.sendall(b_head + b_frames[0])
            assert read_head(b) == cb["http_response"], "101 head differs"
            t, raw = read_frame(b)
            assert raw == s2c_frame(cb, "ServerKey"), "ServerKey differs"
            t, raw = read_frame(b)
            assert t == 3 and len(raw) == len(s2c_frame(cb, "ServerInfo")), "ServerInfo"
            a = socket.create_connection(("127.0.0.1", r2.port), timeout=5)
            a.sendall(a_head + b"".join(a_frames))
            assert read_head(a) == ca["http_response"]
            assert read_frame(a)[1] == s2c_frame(ca, "ServerKey")
            t, raw = read_frame(a)
            assert t == 3 and len(raw) == 58, (t, len(raw))
            assert read_frame(a)[1] == s2c_frame(ca, "Pong"), "Pong differs"
            assert read_frame(a)[1] == s2c_frame(ca, "PeerGone", 0), "PeerGone NotHere differs"
            assert read_frame_skipping(b)[1] == s2c_frame(cb, "RecvPacket"), "B's RecvPacket differs"
            b.sendall(b_frames[1])
            assert read_frame_skipping(a)[1] == s2c_frame(ca, "RecvPacket"), "A's RecvPacket differs"
            b.close()
            assert read_frame_skipping(a)[1] == s2c_frame(ca, "PeerGone", 1), "PeerGone Disconnected differs"
            a.close()
            log = r2.log_text()
            assert "[ylcJC] 127.0.0.1" in log and "connected" in log, log
        finally:
            why = r2.stop()
        assert why is None, why

    cases.run("replay_captured_sessions", replay_captured_sessions)
    return 1 if cases.failed else 0


if __name__ == "__main__":
    sys.exit(main())
