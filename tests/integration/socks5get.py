"""A SOCKS5 client for tests that run inside a namespace: connects through the proxy on
127.0.0.1:PROXY to HOST:PORT (a domain name unless it parses as an address), optionally sends
DATA and half-closes, reads to the end, and prints "reply N" then "BYTES SHA256".

    python3 socks5get.py PROXY HOST PORT [DATA]"""
import hashlib
import socket
import struct
import sys

proxy, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", proxy), timeout=60)
s.sendall(b"\x05\x01\x00")
assert s.recv(2) == b"\x05\x00"
try:
    addr = b"\x01" + socket.inet_pton(socket.AF_INET, host)
except OSError:
    try:
        addr = b"\x04" + socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
s.sendall(b"\x05\x01\x00" + addr + struct.pack(">H", port))
rep = s.recv(10)
print("reply %d" % rep[1], flush=True)
if rep[1] == 0:
    if len(sys.argv) > 4:
        s.sendall(sys.argv[4].encode())
        s.shutdown(socket.SHUT_WR)
    h, n = hashlib.sha256(), 0
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        h.update(b)
        n += len(b)
    print("%d %s" % (n, h.hexdigest()), flush=True)
