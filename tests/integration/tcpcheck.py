"""A TCP transfer with checksums, for tunnel tests (run inside a namespace).

    python3 tcpcheck.py recv ADDR PORT          accepts one connection, reads to EOF,
                                                prints "<bytes> <sha256>", exits
    python3 tcpcheck.py send ADDR PORT BYTES    sends BYTES random bytes, prints the same

Both sides print their line on stdout; the test compares them. recv prints "listening"
on stderr once it accepts connections. Everything is bounded by a 60 s socket timeout.
"""
import hashlib
import os
import socket
import sys


def main():
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    h = hashlib.sha256()
    total = 0
    if mode == "recv":
        ls = socket.socket(fam, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(1)
        ls.settimeout(60)
        sys.stderr.write("listening\n")
        sys.stderr.flush()
        c, _ = ls.accept()
        c.settimeout(60)
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            h.update(b)
            total += len(b)
        c.close()
    else:
        n = int(sys.argv[4])
        c = socket.create_connection((addr, port), timeout=60)
        while total < n:
            b = os.urandom(min(1 << 16, n - total))
            c.sendall(b)
            h.update(b)
            total += len(b)
        c.shutdown(socket.SHUT_WR)
        c.recv(1)   # wait for the receiver's close: everything arrived
        c.close()
    print(total, h.hexdigest(), flush=True)


if __name__ == "__main__":
    main()
