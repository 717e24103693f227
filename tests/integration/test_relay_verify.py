#!/usr/bin/env python3
"""hwrelay -verify-client-url: a tiny admission controller on 127.0.0.1 allows one
node key (derpfix-A from the capture) and denies another (derpfix-B); answers are
cached; an unreachable controller refuses by default and admits with fail-open."""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from relayctl import FIXTURES, Cases, Relay, derp_pair, free_port


class Controller:
    def __init__(self, allow_keys):
        self.allow = set(allow_keys)
        self.requests = []
        ctl = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                req = json.loads(body)
                ctl.requests.append((self.path, self.headers.get("Content-Type"), req))
                ans = json.dumps({"Allow": req.get("NodePublic") in ctl.allow}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(ans)))
                self.end_headers()
                self.wfile.write(ans)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def main():
    cases = Cases()
    with open(os.path.join(FIXTURES, "derp-session.json")) as f:
        keys = json.load(f)["keys"]
    a_priv, a_pub = keys["derpfix_A_private"], keys["derpfix_A_public"]
    b_priv, b_pub = keys["derpfix_B_private"], keys["derpfix_B_public"]

    ctl = Controller([a_pub])
    relay = Relay("-verify-client-url", "http://127.0.0.1:%d/verify?src=hwrelay" % ctl.port, stun=False)

    def allowed_key_connects():
        ok, out = derp_pair("ping", "-s", relay.addr, "-key", a_priv)
        assert ok, out
        path, ctype, req = ctl.requests[-1]
        assert path == "/verify?src=hwrelay" and ctype == "application/json", (path, ctype)
        assert req == {"NodePublic": a_pub, "Source": "127.0.0.1"}, req

    def denied_key_refused():
        ok, out = derp_pair("ping", "-s", relay.addr, "-key", b_priv)
        assert not ok and "no ServerInfo" in out, out
        assert "not allowed" in relay.log_text(), relay.log_text()[-500:]

    def answers_cached():
        n = len(ctl.requests)
        for _ in range(3):
            ok, out = derp_pair("ping", "-s", relay.addr, "-key", a_priv)
            assert ok, out
        assert len(ctl.requests) == n, "allow answer not cached: %d requests" % (len(ctl.requests) - n)
        ok, _ = derp_pair("ping", "-s", relay.addr, "-key", b_priv)
        assert not ok and len(ctl.requests) == n, "deny answer not cached"

    def other_clients_not_blocked_while_verifying():
        # An unverified client (random key) is refused; traffic of admitted ones flows.
        ok, out = derp_pair("peergone", "-s", relay.addr)
        assert not ok, out

    cases.run("allowed_key_connects", allowed_key_connects)
    cases.run("denied_key_refused", denied_key_refused)
    cases.run("answers_cached", answers_cached)
    cases.run("unknown_keys_refused", other_clients_not_blocked_while_verifying)

    def clean_exit():
        why = relay.stop()
        ctl.close()
        assert why is None, why

    cases.run("clean_exit", clean_exit)

    dead = free_port()

    def unreachable_fails_closed():
        r = Relay("-verify-client-url", "http://127.0.0.1:%d/verify" % dead, stun=False)
        try:
            ok, out = derp_pair("ping", "-s", r.addr, "-key", a_priv)
            assert not ok, out
            assert "unreachable" in r.log_text() and "fail-closed" in r.log_text(), r.log_text()[-500:]
        finally:
            why = r.stop()
        assert why is None, why

    def unreachable_fail_open_admits():
        r = Relay("-verify-client-url", "http://127.0.0.1:%d/verify" % dead, "-verify-client-url-fail-open",
                  stun=False)
        try:
            ok, out = derp_pair("ping", "-s", r.addr, "-key", b_priv)
            assert ok, out
            assert "fail-open" in r.log_text()
        finally:
            why = r.stop()
        assert why is None, why

    cases.run("unreachable_fails_closed", unreachable_fails_closed)
    cases.run("unreachable_fail_open_admits", unreachable_fail_open_admits)
    return 1 if cases.failed else 0


if __name__ == "__main__":
    sys.exit(main())
