"""The control-server topology of the data-plane tests and bench (root only).

    net, a, b = topology(nn)      # netns.Netns: "net" holds SERVER_IP, a and b reach only it
    Server(config=server_config(port, stun_port), wrap=["ip", "netns", "exec", net])
    NsClient(server, "a", key=..., ns=a, extra=["--tun", DEV])   # hwclient up inside a
"""
import hwnet

SERVER_IP = "10.79.9.1"


class NsClient(hwnet.Client):
    """hwclient up inside a namespace (its control socket is still a file here)."""

    def __init__(self, *a, ns=None, **kw):
        self.ns = ns
        super().__init__(*a, **kw)

    def argv(self):
        return ["ip", "netns", "exec", self.ns] + super().argv()


def topology(nn):
    net, a, b = nn.ns("net"), nn.ns("a"), nn.ns("b")
    nn.run(net, "ip", "addr", "add", SERVER_IP + "/32", "dev", "lo")
    nn.veth(net, "10.79.0.1/24", a, "10.79.0.2/24")
    nn.veth(net, "10.79.1.1/24", b, "10.79.1.2/24")
    nn.route(a, SERVER_IP + "/32", "10.79.0.1")
    nn.route(b, SERVER_IP + "/32", "10.79.1.1")
    return net, a, b


def server_config(port, stun):
    return {"server_url": "http://%s:%d" % (SERVER_IP, port),
            "listen_addr": "%s:%d" % (SERVER_IP, port),
            "derp": {"server": {"enabled": True, "region_id": 999, "region_code": "hw",
                                "region_name": "Headwater", "stun_listen_addr": "%s:%d" % (SERVER_IP, stun),
                                "private_key_path": "derp_server_private.key", "verify_clients": True},
                     "urls": [], "paths": [], "auto_update_enabled": False}}
