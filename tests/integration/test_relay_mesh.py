#!/usr/bin/env python3
"""Two hwrelay processes meshed over 127.0.0.1 (-mesh-with, -mesh-psk-file): a client
on each exchanges packets through ForwardPacket, PeerGone crosses the mesh, and a
relay with the wrong mesh key is not trusted."""
import os
import sys
import tempfile

from relayctl import Cases, Relay, derp_pair, free_port


def main():
    cases = Cases()
    work = tempfile.mkdtemp(prefix="hwrelay-mesh-")
    psk = os.path.join(work, "mesh.key")
    with open(psk, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    p1, p2 = free_port(), free_port()
    mesh = "http://127.0.0.1:%d,http://127.0.0.1:%d" % (p1, p2)   # each list names itself too
    r1 = Relay("-mesh-with", mesh, "-mesh-psk-file", psk, port=p1, stun=False)
    r2 = Relay("-mesh-with", mesh, "-mesh-psk-file", psk, port=p2, stun=False)

    def mesh_links_up():
        assert r1.wait_log("): connected"), r1.log_text()[-800:]
        assert r2.wait_log("): connected"), r2.log_text()[-800:]
        assert "(mesh peer)" in r1.log_text() and "(mesh peer)" in r2.log_text()
        # The entry naming the relay itself was skipped.
        assert r1.log_text().count("will dial") == 1, r1.log_text()

    def packets_cross_the_mesh():
        ok, out = derp_pair("pairs", "-s", r1.addr, "-s2", r2.addr, "-n", "4", "-k", "2000", "-size", "600")
        assert ok and "lost=0 reordered=0" in out, out

    def peer_gone_crosses_the_mesh():
        ok, out = derp_pair("peergone", "-s", r1.addr, "-s2", r2.addr)
        assert ok, out

    def wrong_mesh_key_not_trusted():
        bad = os.path.join(work, "bad.key")
        with open(bad, "w") as f:
            f.write(os.urandom(32).hex())
        r3 = Relay("-mesh-with", "http://127.0.0.1:%d" % p1, "-mesh-psk-file", bad, stun=False)
        try:
            assert r1.wait_log("sent a wrong mesh key"), r1.log_text()[-800:]
            # Refused as a mesh peer: the link drops (before or after ServerInfo).
            assert r3.wait_log("will retry"), r3.log_text()[-800:]
            assert "): connected" not in r3.log_text() or "link lost" in r3.log_text(), r3.log_text()[-800:]
        finally:
            why = r3.stop()
        assert why is None, why

    cases.run("mesh_links_up", mesh_links_up)
    cases.run("packets_cross_the_mesh", packets_cross_the_mesh)
    cases.run("peer_gone_crosses_the_mesh", peer_gone_crosses_the_mesh)
    cases.run("wrong_mesh_key_not_trusted", wrong_mesh_key_not_trusted)

    def clean_exit():
        for r in (r1, r2):
            why = r.stop()
            assert why is None, why

    cases.run("clean_exit", clean_exit)
    return 1 if cases.failed else 0


if __name__ == "__main__":
    sys.exit(main())
