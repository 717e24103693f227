#!/usr/bin/env python3
"""The /ts2021 upgrade, native and WebSocket, at the byte level: the server runs with the
Noise key of the Headscale capture in shared/fixtures, so the real tailscaled initiation
recorded there is valid for it and the answer can be checked frame by frame."""
import base64
import json
import os
import socket
import struct
import urllib.parse

from hwtest import Server, case, check, contains, eq, skip

FIXTURES = os.environ.get("HW_FIXTURES", os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                       "shared", "fixtures"))


def capture():
    path = os.path.join(FIXTURES, "real-client-http.json")
    if not os.path.exists(path):
        skip("fixture %s not found" % path)
    with open(path) as f:
        return json.load(f)


def server_with_capture_key():
    fx = capture()
    s = Server(start=False)
    with open(s.settings["noise"]["private_key_path"], "w") as f:
        key = fx["keys"]["headscale_noise_private"]
        f.write((key if key.startswith("privkey:") else "privkey:" + key) + "\n")
    os.chmod(s.settings["noise"]["private_key_path"], 0o600)
    s.start()
    return s, bytes.fromhex(fx["ts2021_upgrade"]["initiation_hex"])


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def read_exact(sock, buf, n):
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


@case
def native_upgrade_answers_the_real_initiation():
    s, init = server_with_capture_key()
    with s:
        c = connect(s.port)
        c.sendall(b"POST /ts2021 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: Go-http-client/1.1\r\n"
                  b"Content-Length: 0\r\nConnection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
                  b"X-Tailscale-Handshake: %s\r\n\r\n" % (s.port, base64.b64encode(init)))
        status, headers, rest = read_head(c)
        eq(status, 101, "status")
        eq(headers.get("upgrade"), "tailscale-control-protocol", "Upgrade header")
        contains(headers.get("connection", "").lower(), "upgrade", "Connection header")
        rest = read_exact(c, rest, 51 + 3)
        eq(rest[:3], b"\x02\x00\x30", "Noise response header (type 2, length 48)")
        # Then transport records: the early payload and the server's HTTP/2 SETTINGS.
        eq(rest[51], 4, "first record type")
        c.close()
        eq(s.api("GET", "/api/v1/health")[0], 200, "server fine")


def ws_request(port, init_b64, protocol="tailscale-control-protocol", key="dGhlIHNhbXBsZSBub25jZQ=="):
    q = urllib.parse.quote(init_b64, safe="")
    req = ("GET /ts2021?X-Tailscale-Handshake=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
           "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
           "Sec-WebSocket-Version: 13\r\n" % (q, port, key))
    if protocol:
        req += "Sec-WebSocket-Protocol: %s\r\n" % protocol
    return (req + "\r\n").encode()


def read_frame(sock, buf):
    buf = read_exact(sock, buf, 2)
    op, n = buf[0] & 0x0F, buf[1] & 0x7F
    check(buf[0] & 0x80, "FIN set")
    check(not buf[1] & 0x80, "server frames are not masked")
    hdr = 2
    if n == 126:
        buf = read_exact(sock, buf, 4)
        n, hdr = struct.unpack(">H", buf[2:4])[0], 4
    elif n == 127:
        buf = read_exact(sock, buf, 10)
        n, hdr = struct.unpack(">Q", buf[2:10])[0], 10
    buf = read_exact(sock, buf, hdr + n)
    return op, buf[hdr:hdr + n], buf[hdr + n:]


def client_frame(op, payload):
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | op, 0x80 | len(payload)]) + mask + masked


@case
def websocket_upgrade_carries_the_same_stream():
    s, init = server_with_capture_key()
    with s:
        c = connect(s.port)
        c.sendall(ws_request(s.port, base64.b64encode(init).decode()))
        status, headers, rest = read_head(c)
        eq(status, 101, "status")
        eq(headers.get("upgrade", "").lower(), "websocket", "Upgrade")
        eq(headers.get("sec-websocket-accept"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "accept key (RFC 6455 example)")
        eq(headers.get("sec-websocket-protocol"), "tailscale-control-protocol", "subprotocol")
        op, payload, rest = read_frame(c, rest)
        eq((op, len(payload), payload[:3]), (2, 51, b"\x02\x00\x30"), "Noise response in one binary message")
        c.sendall(client_frame(0x9, b"ping!"))
        # The server's HTTP/2 SETTINGS record may come first; the pong follows.
        for _ in range(4):
            op, payload, rest = read_frame(c, rest)
            if op == 0xA:
                break
        eq((op, payload), (0xA, b"ping!"), "pong")
        c.sendall(client_frame(0x8, b"\x03\xe8"))
        for _ in range(4):
            op, payload, rest = read_frame(c, rest)
            if op == 0x8:
                break
        eq(op, 0x8, "close answered")
        c.close()


@case
def bad_upgrades_are_refused_clearly():
    s, init = server_with_capture_key()
    with s:
        def exchange(raw):
            c = connect(s.port)
            c.sendall(raw)
            status, headers, rest = read_head(c)
            c.settimeout(5)
            try:
                while True:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    rest += chunk
            except socket.timeout:
                pass
            c.close()
            return status, rest

        status, body = exchange(b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        eq(status, 400, "no Upgrade")
        contains(body.decode(), "Upgrade")
        status, body = exchange(b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                b"Connection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
                                b"X-Tailscale-Handshake: !!!notbase64\r\n\r\n")
        eq(status, 400, "garbage handshake header")
        # A truncated initiation: the upgrade happens, then Tailscale's error message.
        status, body = exchange(b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                b"Connection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
                                b"X-Tailscale-Handshake: %s\r\n\r\n" % base64.b64encode(init[:100]))
        eq(status, 101, "truncated initiation upgrades")
        eq(body[:1], b"\x03", "then a Noise error message")
        contains(body[3:].decode(), "wrong handshake initiation size", "Tailscale's text")
        # A forged initiation (tag broken): silence and a closed connection.
        bad = bytearray(init)
        bad[-1] ^= 1
        status, body = exchange(b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                b"Connection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
                                b"X-Tailscale-Handshake: %s\r\n\r\n" % base64.b64encode(bytes(bad)))
        eq((status, body), (101, b""), "forged initiation gets nothing")
        status, body = exchange(ws_request(s.port, base64.b64encode(init).decode(), protocol=None))
        eq(status, 400, "WebSocket without the subprotocol")
        status, body = exchange(ws_request(s.port, base64.b64encode(init).decode(), key="short"))
        eq(status, 400, "WebSocket with a bad key")
        eq(s.api("GET", "/api/v1/health")[0], 200, "server fine after all that")


if __name__ == "__main__":
    import hwtest
    hwtest.main()
