"""The userspace netstack (lwIP) behind the SOCKS5 and HTTP CONNECT proxies.

build/tools/nstun binds the netstack to a real TUN device inside a network namespace the test
creates: the namespace kernel's TCP stack plays the tailnet peer (100.64.0.2 and
fd7a:115c:a1e0::2) and a Python server there serves files and echoes. The proxies listen on
127.0.0.1 and the cases talk to them with plain socket code, as a user's program would."""
import os
import socket
import threading
import time

import hwtest
from hwtest import case, check, contains, eq, main
from nstunlab import (BLACKHOLE4, CLOSED_PORT, ECHO_PORT, FILE_PORT, FILE_SIZE, OUTSIDE4,
                      PEER4, PEER6, Lab, recv_all_sha, recv_exact)


@case
def socks5_ipv4_file_sha256():
    with Lab() as lab:
        s, rep = lab.socks_connect(1, PEER4, FILE_PORT)
        eq(rep, 0, "reply code")
        eq(recv_all_sha(s), (lab.sha, FILE_SIZE), "sha256 and size of the 10 MB file")
        s.close()


@case
def socks5_ipv6_file_and_half_close():
    with Lab() as lab:
        s, rep = lab.socks_connect(4, PEER6, FILE_PORT)
        eq(rep, 0, "reply code")
        eq(recv_all_sha(s), (lab.sha, FILE_SIZE), "sha256 over IPv6")
        s.close()
        # The client half-closes; the server answers only after seeing that FIN.
        s, rep = lab.socks_connect(4, PEER6, ECHO_PORT)
        eq(rep, 0, "reply code")
        payload = os.urandom(300000)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        eq(len(got), len(payload) + 5, "echo length")
        check(got == b"echo:" + payload, "echoed bytes differ")
        s.close()


@case
def socks5_domain_names():
    with Lab() as lab:
        for name in ("box1", "box1.example.com", "BOX1.example.com.", "v6only"):
            s, rep = lab.socks_connect(3, name, ECHO_PORT)
            eq(rep, 0, "reply for %s" % name)
            s.sendall(name.encode())
            s.shutdown(socket.SHUT_WR)
            eq(recv_exact(s, 5 + len(name)), b"echo:" + name.encode(), "echo via " + name)
            s.close()
        # Not a tailnet name, and nstun gives no system resolver: host unreachable.
        s, rep = lab.socks_connect(3, "nosuchbox.invalid", ECHO_PORT)
        eq(rep, 4, "reply for an unknown name")
        s.close()
        # An address literal in a domain-name request still works.
        s, rep = lab.socks_connect(3, PEER4, ECHO_PORT)
        eq(rep, 0, "reply for a literal as a name")
        s.close()


@case
def socks5_refused_and_unreachable():
    with Lab() as lab:
        s, rep = lab.socks_connect(1, PEER4, CLOSED_PORT)
        eq(rep, 5, "no listener: connection refused")
        s.close()
        s, rep = lab.socks_connect(4, PEER6, CLOSED_PORT)
        eq(rep, 5, "no listener over IPv6: connection refused")
        s.close()
        t0 = time.monotonic()
        s, rep = lab.socks_connect(1, BLACKHOLE4, ECHO_PORT)
        took = time.monotonic() - t0
        eq(rep, 4, "nobody answers: host unreachable")
        check(took < 10 * hwtest.SLOW, "connect timeout took %.1fs" % took)
        s.close()
        s, rep = lab.socks_connect(1, OUTSIDE4, ECHO_PORT)
        eq(rep, 3, "outside the tailnet: network unreachable")
        s.close()


@case
def socks5_protocol_errors():
    with Lab() as lab:
        for cmd in (2, 3):  # BIND, UDP ASSOCIATE
            s, rep = lab.socks_connect(1, PEER4, ECHO_PORT, cmd=cmd)
            eq(rep, 7, "command %d: command not supported" % cmd)
            eq(s.recv(10), b"", "closed after the refusal")
            s.close()
        # Only username/password offered: no acceptable method.
        s = socket.create_connection(("127.0.0.1", lab.socks), timeout=10)
        s.sendall(b"\x05\x01\x02")
        eq(recv_exact(s, 2), b"\x05\xff", "no acceptable methods")
        s.close()
        # Unknown address type.
        s = socket.create_connection(("127.0.0.1", lab.socks), timeout=10)
        s.sendall(b"\x05\x01\x00\x05\x01\x00\x09" + b"\x00" * 6)
        eq(recv_exact(s, 2), b"\x05\x00", "method selection")
        eq(recv_exact(s, 10)[1], 8, "address type not supported")
        s.close()
        # SOCKS4 / HTTP garbage: closed without a reply; the proxy keeps serving.
        for junk in (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b"GET / HTTP/1.0\r\n\r\n"):
            s = socket.create_connection(("127.0.0.1", lab.socks), timeout=10)
            s.sendall(junk)
            eq(s.recv(10), b"", "garbage closed")
            s.close()
        s, rep = lab.socks_connect(1, PEER4, ECHO_PORT)
        eq(rep, 0, "still serving after garbage")
        s.close()


@case
def http_connect_proxy():
    with Lab() as lab:
        s, head = lab.http_connect("%s:%d" % (PEER4, FILE_PORT))
        contains(head, "HTTP/1.1 200 ", "CONNECT answer")
        eq(recv_all_sha(s), (lab.sha, FILE_SIZE), "sha256 through HTTP CONNECT")
        s.close()
        s, head = lab.http_connect("[%s]:%d" % (PEER6, ECHO_PORT))
        contains(head, "HTTP/1.1 200 ", "CONNECT to IPv6")
        s.sendall(b"ping")
        s.shutdown(socket.SHUT_WR)
        eq(recv_exact(s, 9), b"echo:ping", "echo through HTTP CONNECT")
        s.close()
        s, head = lab.http_connect("box1.example.com:%d" % ECHO_PORT)
        contains(head, "HTTP/1.1 200 ", "CONNECT to a name")
        s.close()
        s, head = lab.http_connect("%s:%d" % (PEER4, CLOSED_PORT))
        contains(head, "HTTP/1.1 502 ", "refused")
        contains(s.recv(1000).decode(), "connection refused", "502 body")
        s.close()
        s = socket.create_connection(("127.0.0.1", lab.http), timeout=10)
        s.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        contains(s.recv(1000).decode(), "HTTP/1.1 405 ", "GET refused")
        s.close()
        s = socket.create_connection(("127.0.0.1", lab.http), timeout=10)
        s.sendall(b"CONNECT nohostport HTTP/1.1\r\n\r\n")
        contains(s.recv(1000).decode(), "HTTP/1.1 400 ", "bad target")
        s.close()


@case
def shutdown_with_open_and_pending_connections():
    # A relayed idle connection and a dial nobody answers (30 s timeout) must not hold up
    # the proxy's shutdown: nstun exits 0, well before the dial would time out.
    lab = Lab(extra=["--connect-timeout-ms", "30000"])
    with lab:
        idle, rep = lab.socks_connect(1, PEER4, ECHO_PORT)
        eq(rep, 0, "reply code")
        pending = socket.create_connection(("127.0.0.1", lab.socks), timeout=60)
        pending.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(BLACKHOLE4) +
                        b"\x1f\x91")
        eq(recv_exact(pending, 2), b"\x05\x00", "method selection")
        time.sleep(0.3)
        t0 = time.monotonic()
    took = time.monotonic() - t0
    check(took < 10 * hwtest.SLOW, "shutdown took %.1fs" % took)
    eq(idle.recv(10), b"", "relayed connection closed by the shutdown")
    idle.close()
    pending.close()


@case
def connection_limit():
    # At the limit a new connection is closed on accept; once one ends, there is room again.
    with Lab(extra=["--max-conns", "3"]) as lab:
        held = [lab.socks_connect(1, PEER4, ECHO_PORT) for _ in range(3)]
        eq([rep for _, rep in held], [0, 0, 0], "replies within the limit")
        extra = socket.create_connection(("127.0.0.1", lab.socks), timeout=10)
        try:
            eq(extra.recv(10), b"", "the connection over the limit is closed")
        except ConnectionResetError:
            pass
        extra.close()
        s, _ = held.pop()
        s.close()
        s, rep = hwtest_retry(lambda: lab.socks_connect(1, PEER4, ECHO_PORT))
        eq(rep, 0, "a connection after one ended")
        s.close()
        for s, _ in held:
            s.close()


def hwtest_retry(fn, tries=50):
    # the proxy notices the closed connection when its relay threads end (within ~1 s)
    for i in range(tries):
        try:
            return fn()
        except (AssertionError, OSError):
            if i == tries - 1:
                raise
            time.sleep(0.1)


@case
def socks5_parallel_20():
    with Lab() as lab:
        results = [None] * 20

        def one(i):
            try:
                s, rep = lab.socks_connect(1 if i % 2 else 4, PEER4 if i % 2 else PEER6,
                                           FILE_PORT)
                if rep != 0:
                    results[i] = "reply %d" % rep
                    return
                results[i] = recv_all_sha(s)
                s.close()
            except Exception as e:  # reported through results
                results[i] = repr(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300 * hwtest.SLOW)
        for i, r in enumerate(results):
            eq(r, (lab.sha, FILE_SIZE), "connection %d" % i)


main()
