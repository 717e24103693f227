#!/usr/bin/env python3
"""The public pages the control protocol needs besides /ts2021: DERP admission
(POST /verify) and the interactive-login page (/register/<id>)."""
import http.client
import json

from hwtest import Server, case, check, contains, eq


def post(port, path, body, method="POST"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    text = r.read()
    conn.close()
    return r.status, text


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    return r.status, text


@case
def verify_allows_only_live_nodes_of_the_tailnet():
    with Server() as s:
        s.hwctl("namespaces", "create", "default")
        node = s.register_node("default", hostname="relay-user")
        status, body = post(s.port, "/verify", {"NodePublic": node["node_key"], "Source": "198.51.100.7"})
        eq((status, json.loads(body)), (200, {"Allow": True}), "registered node")

        stranger = "nodekey:" + "ab" * 32
        status, body = post(s.port, "/verify", {"NodePublic": stranger, "Source": "198.51.100.8"})
        eq((status, json.loads(body)), (200, {"Allow": False}), "unknown key")
        contains(s.log_text(), "relay admission refused", "log line for a refusal")

        # Upper-case hex is the same key.
        status, body = post(s.port, "/verify", {"NodePublic": node["node_key"].upper().replace("NODEKEY", "nodekey")})
        eq(json.loads(body), {"Allow": True}, "upper-case hex")

        s.hwctl("nodes", "expire", "-i", str(node["id"]))
        status, body = post(s.port, "/verify", {"NodePublic": node["node_key"]})
        eq(json.loads(body), {"Allow": False}, "expired node")


@case
def verify_rejects_bad_requests():
    with Server() as s:
        status, body = post(s.port, "/verify", b"{not json")
        eq(status, 400, "bad JSON")
        contains(body.decode(), "NodePublic")
        status, _ = post(s.port, "/verify", {"NodePublic": "mkey:" + "00" * 32})
        eq(status, 400, "wrong key type")
        status, _ = post(s.port, "/verify", b"x" * 5000)
        eq(status, 413, "oversize body")
        status, _ = get(s.port, "/verify")
        eq(status, 405, "GET")
        eq(s.api("GET", "/api/v1/health")[0], 200, "server still fine")


@case
def register_page_shows_the_admit_command():
    with Server() as s:
        s.add_pending("abc123def456", hostname="laptop")
        status, html = get(s.port, "/register/abc123def456")
        eq(status, 200, "known id")
        contains(html, "hwctl nodes register -n NAMESPACE --key abc123def456")
        status, html = get(s.port, "/register/nosuchid")
        eq(status, 404, "unknown id")
        contains(html, "unknown or has expired")
        status, html = get(s.port, "/register/%3Cscript%3E")
        eq(status, 400, "not an id")
        check("<script>" not in html, "id echoed into HTML")
        s.add_pending("oldid", hostname="x", expires_in=-10)
        eq(get(s.port, "/register/oldid")[0], 404, "expired id")


if __name__ == "__main__":
    import hwtest
    hwtest.main()
