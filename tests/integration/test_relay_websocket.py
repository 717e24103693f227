#!/usr/bin/env python3
"""hwrelay's WebSocket /derp (derper's cmd/derper/websocket.go): subprotocol "derp",
binary messages carrying the DERP byte stream, next to plain DERP clients; a
malformed frame closes only its own connection."""
import os
import socket

from derpclient import DerpClient, Refused, frame, ws_frame, SEND_PACKET
from relayctl import Cases, Relay, http_get


def main():
    cases = Cases()
    relay = Relay()
    port = relay.port

    def admitted(websocket):
        c = DerpClient(port, websocket=websocket)
        c.expect_server_info()
        return c

    def exchange(a, b, size):
        data = os.urandom(size)
        a.send_packet(b.pub, data)
        assert b.recv_packet() == (a.pub, data), "a -> b (%d bytes)" % size
        data = os.urandom(size)
        b.send_packet(a.pub, data)
        assert a.recv_packet() == (b.pub, data), "b -> a (%d bytes)" % size

    def upgrade_answer():
        c = DerpClient(port, websocket=True, send_client_info=False)
        assert c.status_line == "HTTP/1.1 101 Switching Protocols", c.status_line
        assert c.headers.get("sec-websocket-protocol") == "derp", c.headers
        assert c.headers.get("upgrade", "").lower() == "websocket", c.headers
        assert "derp-version" not in c.headers, c.headers
        c.close()

    def websocket_and_plain_clients_exchange():
        a = admitted(True)
        b = admitted(False)
        c = admitted(True)
        for size in (1, 1200, 65536):
            exchange(a, b, size)
        exchange(a, c, 500)
        a.ping()
        for x in (a, b, c):
            x.close()

    def fragmented_messages_and_pings():
        a = admitted(True)
        b = admitted(False)
        # One DERP frame spread over a fragmented message, a ping in between.
        data = os.urandom(300)
        f = frame(SEND_PACKET, b.pub + data)
        a.send_wire(ws_frame(f[:7], opcode=2, fin=False) + ws_frame(b"hi", opcode=9) +
                    ws_frame(f[7:100], opcode=0, fin=False) + ws_frame(f[100:], opcode=0, fin=True))
        assert b.recv_packet() == (a.pub, data)
        a.ping()
        assert (10, b"hi") in a.ws_control, a.ws_control

    def malformed_frame_closes_only_that_connection():
        b = admitted(False)
        for bad in (ws_frame(b"\x00" * 5, mask=False),                 # unmasked
                    ws_frame(b"text", opcode=1),                         # text message
                    bytes([0x82, 0xFF]) + b"\x7f" + b"\xff" * 7 + os.urandom(4),  # 2^63 bytes
                    ws_frame(b"x" * 200, opcode=9)):                     # control frame > 125
            a = admitted(True)
            a.send_wire(bad)
            a.expect_closed()
            assert a.ws_closed in (None, 1002), a.ws_closed
        b.ping()

    def close_frame_is_answered():
        a = admitted(True)
        a.send_wire(ws_frame(b"\x03\xe8", opcode=8))
        try:
            a.read_frame()
            raise AssertionError("relay kept talking after the close")
        except Refused:
            pass
        assert a.ws_closed == 1000, a.ws_closed

    def handshake_checks():
        base = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Protocol": "derp",
                "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        for change, want in (({"Sec-WebSocket-Version": "8"}, 400),
                             ({"Sec-WebSocket-Key": "bm9wZQ=="}, 400),
                             ({"Connection": "close"}, 426)):
            h = dict(base)
            h.update(change)
            st, _, _ = http_get(port, "/derp", headers=h)
            assert st == want, (change, st)
        st, _, _ = http_get(port, "/derp", method="POST", headers=base)
        assert st == 405, st
        # Without the derp subprotocol, "Upgrade: websocket" is plain DERP (derper's rule).
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert b"Upgrade: DERP" in head, head
        assert s.recv(5)[:1] == b"\x01", "no plain ServerKey frame"
        s.close()

    for name, fn in [("upgrade_answer", upgrade_answer),
                     ("websocket_and_plain_clients_exchange", websocket_and_plain_clients_exchange),
                     ("fragmented_messages_and_pings", fragmented_messages_and_pings),
                     ("malformed_frame_closes_only_that_connection", malformed_frame_closes_only_that_connection),
                     ("close_frame_is_answered", close_frame_is_answered),
                     ("handshake_checks", handshake_checks)]:
        cases.run(name, fn)

    def over_tls():
        r = Relay("-hostname", "127.0.0.1", certmode="ipself")
        try:
            a = DerpClient(r.port, websocket=True, tls=True)
            a.expect_server_info()
            b = DerpClient(r.port, tls=True)
            b.expect_server_info()
            for size in (10, 65536):
                data = os.urandom(size)
                a.send_packet(b.pub, data)
                assert b.recv_packet() == (a.pub, data)
                b.send_packet(a.pub, data)
                assert a.recv_packet() == (b.pub, data)
            a.close()
            b.close()
        finally:
            why = r.stop()
        assert why is None, why

    def clean_exit():
        why = relay.stop()
        assert why is None, why

    cases.run("over_tls", over_tls)
    cases.run("clean_exit", clean_exit)
    raise SystemExit(1 if cases.failed else 0)


if __name__ == "__main__":
    main()
