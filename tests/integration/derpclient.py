"""A small DERP client for the integration tests: plain /derp or WebSocket /derp.

Standard library plus libsodium through ctypes (NaCl box for ClientInfo/ServerInfo,
X25519 for the public key); libsodium is a build dependency, so it is always there.
The WebSocket framing is done by hand (RFC 6455 client side: masked frames).

    a = DerpClient(port, priv=k)        # upgrade, ServerKey, ClientInfo
    a.expect_server_info()              # admitted (raises Refused if closed instead)
    a.send_packet(b.pub, b"hi")
    src, data = b.recv_packet()
"""
import base64
import ctypes
import ctypes.util
import hashlib
import json
import os
import socket
import struct
import threading
import time

_lib = ctypes.CDLL(ctypes.util.find_library("sodium") or "libsodium.so.23")
if _lib.sodium_init() < 0:
    raise RuntimeError("libsodium failed to start")
_ull = ctypes.c_ulonglong
_lib.crypto_box_easy.argtypes = [ctypes.c_char_p, ctypes.c_char_p, _ull, ctypes.c_char_p,
                                 ctypes.c_char_p, ctypes.c_char_p]
_lib.crypto_box_open_easy.argtypes = _lib.crypto_box_easy.argtypes
_lib.crypto_scalarmult_base.argtypes = [ctypes.c_char_p, ctypes.c_char_p]

MAGIC = b"DERP\xf0\x9f\x94\x91"
SERVER_KEY, CLIENT_INFO, SERVER_INFO, SEND_PACKET, RECV_PACKET = 1, 2, 3, 4, 5
KEEP_ALIVE, NOTE_PREFERRED, PEER_GONE, PING, PONG = 6, 7, 8, 0x12, 0x13
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Refused(Exception):
    """The relay closed the connection instead of admitting the client."""


def public_key(priv):
    out = ctypes.create_string_buffer(32)
    _lib.crypto_scalarmult_base(out, bytes(priv))
    return out.raw


def new_private_key():
    k = bytearray(os.urandom(32))
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def keypair():
    priv = new_private_key()
    return priv, public_key(priv)


def box_seal(msg, nonce, peer_pub, my_priv):
    out = ctypes.create_string_buffer(len(msg) + 16)
    if _lib.crypto_box_easy(out, msg, len(msg), nonce, peer_pub, my_priv) != 0:
        raise RuntimeError("crypto_box_easy failed")
    return out.raw


def box_open(sealed, nonce, peer_pub, my_priv):
    out = ctypes.create_string_buffer(max(len(sealed) - 16, 1))
    if len(sealed) < 16 or _lib.crypto_box_open_easy(out, sealed, len(sealed), nonce, peer_pub,
                                                     my_priv) != 0:
        raise RuntimeError("ServerInfo box does not open")
    return out.raw[:len(sealed) - 16]


def frame(t, payload=b""):
    return bytes([t]) + struct.pack(">I", len(payload)) + payload


def ws_frame(payload, opcode=2, mask=True, fin=True):
    """A client frame (masked unless told otherwise)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n <= 0xFFFF:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(c ^ key[i & 3] for i, c in enumerate(payload))


class DerpClient:
    """One DERP connection. priv=None makes a fresh key. websocket=True speaks DERP in
    WebSocket binary messages (subprotocol "derp"), as the browser client does."""

    def __init__(self, port, priv=None, websocket=False, host="127.0.0.1", timeout=10,
                 headers=None, send_client_info=True, tls=False):
        self.priv = priv or new_private_key()
        self.pub = public_key(self.priv)
        self.websocket = websocket
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            # The tests' relays use throwaway self-signed certificates.
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock, server_hostname=host)
        self.rbuf = b""          # raw bytes from the socket
        self.stream = b""        # DERP bytes (after WebSocket unframing)
        self.ws_closed = None    # close code the server sent
        self.ws_control = []     # (opcode, payload) of control frames received
        req = "GET /derp HTTP/1.1\r\nHost: %s\r\n" % host
        if websocket:
            self.ws_key = base64.b64encode(os.urandom(16)).decode()
            req += ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: derp\r\n" % self.ws_key)
        else:
            req += "Upgrade: DERP\r\nConnection: Upgrade\r\n"
        for k, v in (headers or {}).items():
            req += "%s: %s\r\n" % (k, v)
        req += "\r\n"
        self.sock.sendall(req.encode())
        head = self._read_head()
        self.status_line = head.split("\r\n")[0]
        self.headers = {}
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        if not self.status_line.startswith("HTTP/1.1 101"):
            raise Refused("upgrade refused: %s" % head)
        if websocket:
            want = base64.b64encode(hashlib.sha1(self.ws_key.encode() + WS_GUID).digest()).decode()
            if self.headers.get("sec-websocket-accept") != want:
                raise AssertionError("bad Sec-WebSocket-Accept in %r" % head)
        t, payload = self.read_frame()
        if t != SERVER_KEY or payload[:8] != MAGIC or len(payload) < 40:
            raise AssertionError("first frame is not ServerKey: %d %r" % (t, payload[:16]))
        self.server_pub = payload[8:40]
        if send_client_info:
            self.send_client_info()

    # -- raw I/O

    def _recv(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Refused("connection closed by the relay")
        self.rbuf += chunk

    def _read_head(self):
        while b"\r\n\r\n" not in self.rbuf:
            self._recv()
            if len(self.rbuf) > 65536:
                raise AssertionError("HTTP head too long")
        head, _, rest = self.rbuf.partition(b"\r\n\r\n")
        self.rbuf = rest
        return head.decode()

    def _fill_stream(self):
        """Moves at least one more byte into self.stream."""
        if not self.websocket:
            if not self.rbuf:
                self._recv()
            self.stream += self.rbuf
            self.rbuf = b""
            return
        while True:
            got = self._parse_ws_frame()
            if got == "data":
                return
            if got is None:
                self._recv()

    def _parse_ws_frame(self):
        """One server frame from rbuf: "data" (stream grew), "control", or None when
        no complete frame is buffered."""
        b = self.rbuf
        if self.ws_closed is not None:
            raise Refused("WebSocket closed by the relay (code %s)" % self.ws_closed)
        if len(b) < 2:
            return None
        if b[1] & 0x80:
            raise AssertionError("server frame is masked")
        n = b[1] & 0x7F
        off = 2
        if n == 126:
            if len(b) < 4:
                return None
            n = struct.unpack(">H", b[2:4])[0]
            off = 4
        elif n == 127:
            if len(b) < 10:
                return None
            n = struct.unpack(">Q", b[2:10])[0]
            off = 10
        if len(b) < off + n:
            return None
        op = b[0] & 0x0F
        payload = b[off:off + n]
        self.rbuf = b[off + n:]
        if op == 2 or op == 0:
            self.stream += payload
            return "data" if payload else "control"
        if op == 8:
            self.ws_closed = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.ws_control.append((op, payload))
            raise Refused("WebSocket closed by the relay (code %s)" % self.ws_closed)
        if op in (9, 10):
            self.ws_control.append((op, payload))
            return "control"
        raise AssertionError("unexpected WebSocket opcode %d" % op)

    def send_raw(self, data):
        """DERP bytes, framed for WebSocket when needed."""
        if self.websocket:
            # Split across messages on purpose: the stream must not care.
            out = b""
            for i in range(0, len(data), 1000):
                out += ws_frame(data[i:i + 1000])
            data = out
        self.sock.sendall(data)

    def send_wire(self, data):
        """Bytes exactly as given (for malformed input)."""
        self.sock.sendall(data)

    def read_frame(self):
        while len(self.stream) < 5:
            self._fill_stream()
        t = self.stream[0]
        n = struct.unpack(">I", self.stream[1:5])[0]
        while len(self.stream) < 5 + n:
            self._fill_stream()
        payload = self.stream[5:5 + n]
        self.stream = self.stream[5 + n:]
        return t, payload

    # -- DERP

    def send_client_info(self, info=None):
        msg = json.dumps(info or {"version": 2, "CanAckPings": True}).encode()
        nonce = os.urandom(24)
        self.send_raw(frame(CLIENT_INFO, self.pub + nonce + box_seal(msg, nonce, self.server_pub,
                                                                     self.priv)))

    def expect_server_info(self):
        t, payload = self.read_frame_skipping()
        if t != SERVER_INFO:
            raise AssertionError("expected ServerInfo, got frame type %d" % t)
        info = json.loads(box_open(payload[24:], payload[:24], self.server_pub, self.priv))
        return info

    def read_frame_skipping(self, skip=(KEEP_ALIVE,)):
        while True:
            t, payload = self.read_frame()
            if t not in skip:
                return t, payload

    def send_packet(self, dst, data):
        self.send_raw(frame(SEND_PACKET, dst + data))

    def recv_packet(self):
        t, payload = self.read_frame_skipping((KEEP_ALIVE, PEER_GONE))
        if t != RECV_PACKET:
            raise AssertionError("expected RecvPacket, got frame type %d" % t)
        return payload[:32], payload[32:]

    def ping(self, data=b"12345678"):
        self.send_raw(frame(PING, data))
        t, payload = self.read_frame_skipping((KEEP_ALIVE, PEER_GONE))
        if t != PONG or payload != data:
            raise AssertionError("expected Pong %r, got %d %r" % (data, t, payload))

    def expect_closed(self, timeout=5):
        """The relay ends the connection (EOF or a WebSocket close) without ServerInfo."""
        self.sock.settimeout(timeout)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                t, _ = self.read_frame()
                if t == SERVER_INFO:
                    raise AssertionError("the relay admitted the client")
        except Refused:
            return
        except (ConnectionResetError, BrokenPipeError):
            return
        raise AssertionError("the relay kept the connection open")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# -- load: a flooding client beside a well-behaved pair (rate limit tests, bench)


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


def _admitted(port, **kw):
    c = DerpClient(port, **kw)
    c.expect_server_info()
    return c


def flood_beside_pair(port, websocket=False, tls=False, window=3.0):
    """One client floods another for `window` seconds while a second pair exchanges
    1,000 small packets. Returns flood_bytes (payload bytes the flooder's peer got),
    elapsed, delivered (of the pair's 1,000), worst and median (latency, s) and sent
    (bytes the flooder's socket took)."""
    sink_c = _admitted(port, tls=tls)
    sink = Sink(sink_c)
    flood_c = _admitted(port, websocket=websocket, tls=tls)
    a = _admitted(port, tls=tls)
    b = _admitted(port, tls=tls)
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
        latencies = sorted(at - sent_at[struct.unpack(">I", data[:4])[0]] for at, data in b_sink.packets)
        return {"flood_bytes": flood_bytes, "elapsed": elapsed, "delivered": len(b_sink.packets),
                "worst": latencies[-1] if latencies else 0.0,
                "median": latencies[len(latencies) // 2] if latencies else 0.0, "sent": flooder.sent}
    finally:
        for c in (sink_c, flood_c, a, b):
            c.close()


def check_flood_held(res, rate, burst):
    """The flooder was held to about its limit (within 2x of rate*time+burst, and at
    least a third of the rate) and the pair's packets all came, within 5 s each."""
    bound = 2 * (rate * res["elapsed"] + burst)
    if res["delivered"] != 1000:
        raise AssertionError("the fast pair got %d of 1000 packets while a client flooded" % res["delivered"])
    if res["worst"] > 5:
        raise AssertionError("the fast pair's packets took up to %.1fs" % res["worst"])
    if res["flood_bytes"] > bound:
        raise AssertionError("the flooder's peer got %d bytes in %.1fs, over 2x(limit+burst)=%d"
                             % (res["flood_bytes"], res["elapsed"], bound))
    if res["flood_bytes"] < rate * res["elapsed"] / 3:
        raise AssertionError("the flooder's peer got only %d bytes in %.1fs at %d bytes/s"
                             % (res["flood_bytes"], res["elapsed"], rate))


def stun_request(txid):
    """Tailscale's 40-byte Binding Request: SOFTWARE "tailnode" and FINGERPRINT."""
    import zlib
    body = struct.pack(">HH", 0x8022, 8) + b"tailnode"
    head = struct.pack(">HHI", 0x0001, len(body) + 8, 0x2112A442) + txid
    msg = head + body
    fp = (zlib.crc32(msg) ^ 0x5354554E) & 0xFFFFFFFF
    return msg + struct.pack(">HHI", 0x8028, 4, fp)


def stun_mapped_address(resp, txid):
    """(ip, port) from a Binding Success with XOR-MAPPED-ADDRESS (IPv4)."""
    if resp[:2] != b"\x01\x01" or resp[4:8] != b"\x21\x12\xa4\x42" or resp[8:20] != txid:
        raise AssertionError("not a Binding Success for our transaction: %s" % resp.hex())
    attr_type, attr_len = struct.unpack(">HH", resp[20:24])
    if attr_type != 0x0020 or resp[25] != 1:
        raise AssertionError("no IPv4 XOR-MAPPED-ADDRESS: %s" % resp.hex())
    port = struct.unpack(">H", resp[26:28])[0] ^ 0x2112
    ip = bytes(a ^ b for a, b in zip(resp[28:32], b"\x21\x12\xa4\x42"))
    return socket.inet_ntoa(ip), port
