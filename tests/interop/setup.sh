#!/usr/bin/env bash
# Installs what the interop tests need, on a fresh machine: oidc-provider (npm, pinned by
# package-lock.json), Django OAuth Toolkit and Authlib + Flask in tests/interop/.venv (PyPI, pinned
# by requirements.txt), and the openssl command (Debian) for test keys and certificates.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node and npm are needed for the interop tests: install Node.js 20+" >&2
    exit 1
fi
# --prefer-offline: use the local npm cache when it has the locked versions, else the registry.
npm ci --prefer-offline --no-audit --no-fund --loglevel=error

missing=()
command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -c 'import django, oauth2_provider, authlib, flask; print("interop: node", end=" ")' && node --version
# server.mjs imports jose, oidc-provider's own dependency, for its token exchange grant.
node -e 'import("jose").then(() => {}, (e) => { console.error(`interop: jose: ${e.message}`); process.exit(1); })'
