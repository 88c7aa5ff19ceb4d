#!/usr/bin/env python3
"""A client-credentials token endpoint on 127.0.0.1 for the live tests (tests/live/*.sh).

It issues opaque tokens to the clients it is given, logs every request as one JSON line (the
tests count them), and holds requests while a gate file is missing, so a test can look at a
service while its first token request is in flight. It is a test fixture: no TLS, no persistence.

    token_endpoint.py --port-file F --log F [--gate F] [--expires-in S] ID:SECRET[:AUDIENCE]...
"""

import argparse
import base64
import json
import os
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GATE_TIMEOUT = 60.0


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--gate")
    parser.add_argument("--expires-in", type=int, default=3600)
    parser.add_argument("clients", nargs="+", metavar="ID:SECRET[:AUDIENCE]")
    args = parser.parse_args()
    args.known = {}
    for spec in args.clients:
        client_id, secret, *audience = spec.split(":", 2)
        args.known[client_id] = (secret, audience[0] if audience else None)
    return args


ARGS = parse_args()
LOG_LOCK = threading.Lock()


def log(**fields):
    with LOG_LOCK, open(ARGS.log, "a", encoding="utf-8") as out:
        out.write(json.dumps(fields, sort_keys=True) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # stderr stays quiet; the JSON log is the record
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def params(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace")
        if (self.headers.get("content-type") or "").startswith("application/json"):
            body = json.loads(raw or "{}")
            params = {k: v for k, v in body.items() if isinstance(v, str)}
        else:
            params = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
        basic = self.headers.get("authorization") or ""
        if basic.lower().startswith("basic "):
            user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            params["client_id"] = urllib.parse.unquote_plus(user)
            params["client_secret"] = urllib.parse.unquote_plus(password)
        return params

    def do_POST(self):
        params = self.params()
        client_id = params.get("client_id", "")
        audience = params.get("audience")
        log(event="received", client_id=client_id, audience=audience)
        if ARGS.gate:
            deadline = time.monotonic() + GATE_TIMEOUT
            while not os.path.exists(ARGS.gate) and time.monotonic() < deadline:
                time.sleep(0.05)
        known = ARGS.known.get(client_id)
        if params.get("grant_type") != "client_credentials":
            status, body = 400, {"error": "unsupported_grant_type"}
        elif known is None or params.get("client_secret") != known[0]:
            status, body = 401, {"error": "invalid_client", "error_description": "bad credentials"}
        elif known[1] is not None and audience != known[1]:
            status, body = 403, {"error": "access_denied", "error_description": "wrong audience"}
        else:
            token = secrets.token_urlsafe(32)
            status = 200
            body = {"access_token": token, "token_type": "Bearer", "expires_in": ARGS.expires_in}
        log(
            event="answered",
            client_id=client_id,
            audience=audience,
            status=status,
            token=body.get("access_token"),
        )
        self.answer(status, body)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = ARGS.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(str(server.server_address[1]))
    os.replace(tmp, ARGS.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
