"""A real RFC 7523 §2.1 JWT-bearer grant server for bearerd's interop tests: Authlib on Flask.

    python jwt_bearer_server.py CONFIG.json

It serves Authlib's AuthorizationServer with its JWTBearerGrant on 127.0.0.1 with an ephemeral
port and, once it accepts connections, prints exactly one line to stdout:

    {"issuer": "http://127.0.0.1:PORT", "token_endpoint": ".../token", "stats": ".../__test/stats",
     "introspect": ".../__test/introspect"}

Everything else goes to stderr. It exits when its standard input reaches end-of-file (so a test
process that dies never leaves it behind) and on SIGTERM/SIGINT.

CONFIG is a JSON object:

    {
      "clients": [{
        "client_id": "bot",
        "issuer": "https://kubernetes.default.svc",   # the assertion `iss` that names this client
                                                      # (default: the client_id)
        "subjects": ["system:serviceaccount:ns:bot"], # the `sub` values it may assert
                                                      # (default: [client_id])
        "jwks": {"keys": [...]}                       # the public keys its assertions are signed by
      }],
      "scopes": ["tasks:read", "tasks:write"],  # every scope the server knows (others: invalid_scope)
      "ttl": 300,                               # access token lifetime in seconds
      "leeway": 5                               # clock skew allowed on exp/nbf/iat, in seconds
    }

What Authlib checks (JWTBearerGrant, joserfc): the assertion is a JWS whose `iss` names a client;
its signature verifies with that client's JWKS; `aud` is the token endpoint or the issuer; `exp`
is present and not past (with the leeway), `nbf`/`iat` not in the future; `sub`, when present, is
one the client may assert; the requested scope is known. No client authentication is asked for:
the assertion is the authorization grant and identifies the client. Tokens are opaque; the
test-only endpoints tell what was issued and what was received:

    GET  /__test/stats      -> {"token_requests":N,"issued":{"client":N},"errors":{"error":N},
                                "assertions":[{"iss","sub","jti","ok"}]}
    POST /__test/introspect <- token=...  -> {"active":true,"client_id","sub","scope","exp"}
"""

import json
import signal
import sys
import threading
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc7523 import JWTBearerGrant
from flask import Flask, jsonify, request
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from werkzeug.serving import make_server


def fail(message):
    sys.stderr.write(f"bearerd-jwt-bearer: {message}\n")
    sys.exit(2)


if len(sys.argv) != 2:
    fail("usage: python jwt_bearer_server.py CONFIG.json")
try:
    with open(sys.argv[1], encoding="utf-8") as config_file:
        CONFIG = json.load(config_file)
except (OSError, ValueError) as error:
    fail(f"cannot read config {sys.argv[1]}: {error}")

READY = sys.stdout
sys.stdout = sys.stderr

GRANT = JWTBearerGrant.GRANT_TYPE
TTL = int(CONFIG.get("ttl", 300))
LEEWAY = int(CONFIG.get("leeway", 5))


class Client(ClientMixin):
    def __init__(self, spec):
        self.client_id = spec["client_id"]
        self.issuer = spec.get("issuer", self.client_id)
        self.subjects = set(spec.get("subjects", [self.client_id]))
        self.keys = KeySet.import_key_set(spec["jwks"])

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope

    def check_grant_type(self, grant_type):
        return grant_type == GRANT


class User:
    def __init__(self, subject):
        self.subject = subject

    def get_user_id(self):
        return self.subject


CLIENTS = {}
for spec in CONFIG.get("clients", []):
    try:
        client = Client(spec)
    except (KeyError, ValueError, TypeError) as error:
        fail(f"client {spec.get('client_id')!r}: {error!r}")
    CLIENTS[client.issuer] = client

LOCK = threading.Lock()
STATS = {"token_requests": 0, "issued": {}, "errors": {}, "assertions": []}
TOKENS = {}

app = Flask(__name__)
app.config["OAUTH2_SCOPES_SUPPORTED"] = CONFIG.get("scopes", ["tasks:read", "tasks:write"])
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {GRANT: TTL}
ISSUER = None  # set once the port is known


class KubernetesShapedJWTBearerGrant(JWTBearerGrant):
    """The client is the assertion's `iss`; its `sub` may differ (a service account)."""

    LEEWAY = LEEWAY
    CLAIMS_OPTIONS = {
        "iss": {"essential": True},
        "aud": {"essential": True},
        "exp": {"essential": True},
    }

    def resolve_issuer_client(self, issuer):
        return CLIENTS.get(issuer)

    def resolve_client_public_key(self, client):
        return client.keys

    def get_audiences(self):
        return [f"{ISSUER}/token", ISSUER]

    def authenticate_user(self, subject):
        if any(subject in c.subjects for c in CLIENTS.values()):
            return User(subject)
        return None

    def has_granted_permission(self, client, user):
        return user.subject in client.subjects


def save_token(token, oauth_request):
    with LOCK:
        TOKENS[token["access_token"]] = {
            "client_id": oauth_request.client.client_id,
            "sub": oauth_request.user.subject if oauth_request.user else None,
            "scope": token.get("scope"),
            "exp": int(time.time()) + int(token.get("expires_in", TTL)),
        }


server = AuthorizationServer(app, query_client=lambda client_id: None, save_token=save_token)
server.register_grant(KubernetesShapedJWTBearerGrant)


def peek(assertion):
    """The claims of the assertion as received, unverified: for the bookkeeping only."""
    try:
        claims = json.loads(extract_compact(assertion.encode()).payload)
        return claims if isinstance(claims, dict) else {}
    except Exception:  # noqa: BLE001 - any malformed assertion is recorded as such
        return {}


@app.post("/token")
def token():
    response = server.create_token_response()
    body = response.get_json(silent=True) or {}
    claims = peek(request.form.get("assertion", ""))
    ok = response.status_code == 200
    with LOCK:
        STATS["token_requests"] += 1
        STATS["assertions"].append(
            {"iss": claims.get("iss"), "sub": claims.get("sub"), "jti": claims.get("jti"), "ok": ok}
        )
        if ok:
            client = CLIENTS[claims["iss"]].client_id
            STATS["issued"][client] = STATS["issued"].get(client, 0) + 1
        else:
            error = body.get("error", str(response.status_code))
            STATS["errors"][error] = STATS["errors"].get(error, 0) + 1
            sys.stderr.write(f"bearerd-jwt-bearer: token error: {json.dumps(body)}\n")
    return response


@app.get("/__test/stats")
def stats():
    with LOCK:
        return jsonify(STATS)


@app.post("/__test/introspect")
def introspect():
    with LOCK:
        info = TOKENS.get(request.form.get("token", ""))
    if info is None or info["exp"] <= time.time():
        return jsonify({"active": False})
    return jsonify({"active": True, **info})


httpd = make_server("127.0.0.1", 0, app, threaded=True)
ISSUER = f"http://127.0.0.1:{httpd.server_port}"


def stop(*_):
    threading.Thread(target=httpd.shutdown, daemon=True).start()


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)


def watch_stdin():
    while sys.stdin.buffer.read(65536):
        pass
    stop()


threading.Thread(target=watch_stdin, daemon=True).start()
READY.write(
    json.dumps(
        {
            "issuer": ISSUER,
            "token_endpoint": f"{ISSUER}/token",
            "stats": f"{ISSUER}/__test/stats",
            "introspect": f"{ISSUER}/__test/introspect",
        }
    )
    + "\n"
)
READY.flush()
httpd.serve_forever()
