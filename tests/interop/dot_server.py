"""A second real OAuth 2.0 authorization server for bearerd's interop tests: Django OAuth Toolkit.

    python dot_server.py CONFIG.json

It builds a throwaway Django project in memory (settings, URLs) with an SQLite database in a
temporary directory, migrates it, registers the clients from CONFIG, and serves it on 127.0.0.1 with
an ephemeral port. Once it accepts connections it prints exactly one line to stdout:

    {"issuer": "http://127.0.0.1:PORT", "token_endpoint": ".../o/token/",
     "introspection_endpoint": ".../o/introspect/"}

Everything else goes to stderr. It exits when its standard input reaches end-of-file (so a test
process that dies never leaves it behind) and on SIGTERM/SIGINT.

CONFIG is a JSON object:

    {
      "clients": [{"client_id": "a", "client_secret": "s", "name": "optional"}],
      "ttl": 300,                          # access token lifetime in seconds
      "scopes": ["tasks:read", "tasks:write"]  # every scope the server knows
    }

Each client is a confidential application with the client_credentials grant; Django OAuth Toolkit
authenticates it with client_secret_basic or client_secret_post, whichever the request uses.
Installed by `.ci/run` from tests/interop/requirements.txt into tests/interop/.venv.
"""

import atexit
import json
import os
import shutil
import signal
import socketserver
import sys
import tempfile
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


def fail(message):
    sys.stderr.write(f"bearerd-dot: {message}\n")
    sys.exit(2)


if len(sys.argv) != 2:
    fail("usage: python dot_server.py CONFIG.json")
try:
    with open(sys.argv[1], encoding="utf-8") as config_file:
        CONFIG = json.load(config_file)
except (OSError, ValueError) as error:
    fail(f"cannot read config {sys.argv[1]}: {error}")

# Django prints to stdout in places; stdout is reserved for the ready line.
READY = sys.stdout
sys.stdout = sys.stderr

WORKDIR = tempfile.mkdtemp(prefix="bearerd-dot-")
# Removed however the server ends: a normal or failed exit (atexit), or `stop` below.
atexit.register(shutil.rmtree, WORKDIR, True)
SCOPES = CONFIG.get("scopes", ["tasks:read", "tasks:write"])

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.configure(
    DEBUG=False,
    SECRET_KEY="bearerd-interop-not-a-secret",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    USE_TZ=True,
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "oauth2_provider",
    ],
    MIDDLEWARE=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(WORKDIR, "db.sqlite3"),
        }
    },
    OAUTH2_PROVIDER={
        "SCOPES": {scope: scope for scope in SCOPES},
        "DEFAULT_SCOPES": SCOPES,
        "ACCESS_TOKEN_EXPIRE_SECONDS": int(CONFIG.get("ttl", 300)),
    },
    LOGGING={
        "version": 1,
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": sys.stderr}},
        "loggers": {"oauth2_provider": {"handlers": ["stderr"], "level": "DEBUG"}},
    },
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.urls import include, path  # noqa: E402

urlpatterns = [path("o/", include("oauth2_provider.urls", namespace="oauth2_provider"))]

call_command("migrate", verbosity=0, interactive=False)

from oauth2_provider.models import Application  # noqa: E402

for client in CONFIG.get("clients", []):
    Application.objects.create(
        name=client.get("name", client["client_id"]),
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_CLIENT_CREDENTIALS,
    )

from django.core.wsgi import get_wsgi_application  # noqa: E402


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        sys.stderr.write("bearerd-dot: %s\n" % (format % args))


server = make_server(
    "127.0.0.1", 0, get_wsgi_application(), server_class=ThreadingServer, handler_class=QuietHandler
)
port = server.server_address[1]
base = f"http://127.0.0.1:{port}"


def stop(*_):
    # os._exit skips atexit: the database goes first.
    shutil.rmtree(WORKDIR, ignore_errors=True)
    os._exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)


def watch_stdin():
    while sys.stdin.buffer.read(4096):
        pass
    stop()


threading.Thread(target=watch_stdin, daemon=True).start()

READY.write(
    json.dumps(
        {
            "issuer": base,
            "token_endpoint": f"{base}/o/token/",
            "introspection_endpoint": f"{base}/o/introspect/",
        }
    )
    + "\n"
)
READY.flush()
server.serve_forever()
