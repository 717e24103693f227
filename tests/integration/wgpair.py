"""Two WireGuard ends in two namespaces, for test_wg_interop.py and bench/wg_bench.py.

    side = Side(nn, "a", underlay="10.77.0.1", port=51820, tun4="10.78.0.1", tun6="fd78::1")
    start_hwclient(side, peer, dir)   # `hwclient wg -c FILE --tun DEV` inside side.ns
    start_wggo(side, peer, dir)       # wireguard-go DEV + `wg set` + addresses, MTU 1420

Processes are started with nn.popen, so the Netns block ends them.
"""
import os
import subprocess

from hwtest import BUILD, SLOW, check

HWCLIENT = os.path.join(BUILD, "hwclient")


def genkey():
    priv = subprocess.run(["wg", "genkey"], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, stdout=subprocess.PIPE, text=True,
                         check=True).stdout.strip()
    return priv, pub


class Side:
    """One end of the tunnel: a namespace, a key pair, an underlay and a tunnel address."""

    def __init__(self, nn, name, underlay, port, tun4, tun6):
        self.nn, self.ns = nn, nn.ns(name)
        self.priv, self.pub = genkey()
        self.underlay, self.port, self.tun4, self.tun6 = underlay, port, tun4, tun6
        self.dev = nn.ifname("w")
        self.proc = None
        self.log = None


def start_hwclient(side, peer, dirpath):
    conf = os.path.join(dirpath, "%s.conf" % side.dev)
    with open(conf, "w") as f:
        f.write("[Interface]\nPrivateKey = %s\nListenPort = %d\nAddress = %s/24, %s/64\n\n"
                "[Peer]\nPublicKey = %s\nEndpoint = %s:%d\nAllowedIPs = %s/32, %s/128\n"
                % (side.priv, side.port, side.tun4, side.tun6, peer.pub, peer.underlay, peer.port,
                   peer.tun4, peer.tun6))
    side.log = open(os.path.join(dirpath, "%s.log" % side.dev), "w+")
    side.proc = side.nn.popen(side.ns, [HWCLIENT, "wg", "-c", conf, "--tun", side.dev],
                              stdout=side.log, stderr=subprocess.STDOUT)
    side.nn.wait_for(lambda: side.proc.poll() is not None or
                     side.tun4 in side.nn.run(side.ns, "ip", "-4", "addr", "show", side.dev, check=False).stdout,
                     10 * SLOW, "hwclient wg to bring %s up" % side.dev)
    check(side.proc.poll() is None, "hwclient wg exited: %s" % log_of(side))


def start_wggo(side, peer, dirpath):
    keyfile = os.path.join(dirpath, "%s.key" % side.dev)
    with open(keyfile, "w") as f:
        f.write(side.priv + "\n")
    side.log = open(os.path.join(dirpath, "%s.log" % side.dev), "w+")
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
    side.proc = side.nn.popen(side.ns, ["wireguard-go", side.dev], stdout=side.log,
                              stderr=subprocess.STDOUT, env=env)
    sock = "/var/run/wireguard/%s.sock" % side.dev
    side.nn.wait_for(lambda: os.path.exists(sock), 10, "wireguard-go's socket")
    nn, ns = side.nn, side.ns
    nn.run(ns, "wg", "set", side.dev, "private-key", keyfile, "listen-port", side.port,
           "peer", peer.pub, "endpoint", "%s:%d" % (peer.underlay, peer.port),
           "allowed-ips", "%s/32,%s/128" % (peer.tun4, peer.tun6))
    nn.run(ns, "ip", "addr", "add", "%s/24" % side.tun4, "dev", side.dev)
    nn.run(ns, "ip", "-6", "addr", "add", "%s/64" % side.tun6, "dev", side.dev, "nodad")
    nn.run(ns, "ip", "link", "set", side.dev, "mtu", "1420", "up")


def log_of(side):
    if not side.log:
        return ""
    side.log.flush()
    side.log.seek(0)
    return side.log.read()[-1500:]


