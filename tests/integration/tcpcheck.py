"""A TCP transfer with checksums, for tunnel tests (run inside a namespace).

    python3 tcpcheck.py recv ADDR PORT          accepts one connection, reads to EOF,
                                                prints "<bytes> <sha256>", exits
    python3 tcpcheck.py send ADDR PORT BYTES    sends BYTES random bytes, prints the same

    python3 tcpcheck.py whoami ADDR PORT N      accepts N connections (60 s in all), writes
                                                each one the address it came from, exits
    python3 tcpcheck.py ask ADDR PORT           connects (5 s limit), prints the answer
                                                (whoami's view of our source), exit 1 on failure

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
    if mode == "whoami":
        ls = socket.socket(fam, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(4)
        ls.settimeout(60)
        sys.stderr.write("listening\n")
        sys.stderr.flush()
        for _ in range(int(sys.argv[4])):
            c, peer = ls.accept()
            c.sendall((peer[0] + "\n").encode())
            c.close()
        return
    if mode == "ask":
        try:
            c = socket.create_connection((addr, port), timeout=5)
            c.settimeout(5)
            print(c.recv(200).decode().strip(), flush=True)
            c.close()
        except OSError as e:
            print("ask %s:%d: %s" % (addr, port, e), file=sys.stderr)
            sys.exit(1)
        return
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
