#!/bin/sh
# Calls Camunda Tasklist with the token files bearerd keeps fresh.
# Usage: examples/use-tokens.sh [TOKEN_DIR] [TASKLIST_URL]
set -eu

dir=${1:-/run/bearerd}
tasklist=${2:-http://localhost:8080}

# The env file: one assignment of the token, one of its expiry (unix seconds).
. "$dir/tasklist.env"
now=$(date +%s)
if [ "$TASKLIST_TOKEN_EXPIRES_AT" -le "$now" ]; then
    echo "the token in $dir/tasklist.env has expired; is bearerd running?" >&2
    exit 1
fi
echo "token valid for $((TASKLIST_TOKEN_EXPIRES_AT - now)) more seconds" >&2

# The header file: curl reads the whole "Authorization: Bearer …" line from it.
curl -sS -X POST -H "accept: application/json" -H "@$dir/tasklist.header" -d '' \
    "$tasklist/v1/tasks/search"

# Or the bare token file, as Camunda's docs show it.
curl -sS -X POST -H "accept: application/json" \
    -H "Authorization: Bearer $(cat "$dir/tasklist.token")" -d '' \
    "$tasklist/v1/tasks/search"
