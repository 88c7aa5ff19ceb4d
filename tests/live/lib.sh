# shellcheck shell=bash
# Shared by tests/live/systemd.sh and tests/live/container.sh: the cached Debian 12 root, the
# token endpoint, polling and failing. Sourced, never run; it starts nothing by itself.

# The machine-local cache: the Debian root (and, in podman's storage, the image imported from
# it) are keyed by the recipe below, so a second run on the same machine reuses them.
LIVE_CACHE="${BEARERD_LIVE_CACHE:-/var/cache/bearerd-ci}"
LIVE_MIRROR="http://deb.debian.org/debian"
LIVE_SECURITY_MIRROR="http://deb.debian.org/debian-security"
LIVE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

pass() {
    printf 'ok: %s\n' "$*"
}

# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds; 1 at the deadline.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# The recipe of the Debian 12 root: systemd as PID 1, what the package needs (adduser), and
# the CA roots. Any change to it (or to mmdebstrap's version) makes a new cache entry.
live_root_recipe() {
    printf '%s\n' \
        "mmdebstrap $(dpkg-query -W -f='${Version}' mmdebstrap)" \
        "--variant=minbase --include=systemd,systemd-sysv,ca-certificates,adduser,passwd" \
        "bookworm" \
        "deb $LIVE_MIRROR bookworm main" \
        "deb $LIVE_MIRROR bookworm-updates main" \
        "deb $LIVE_SECURITY_MIRROR bookworm-security main"
}

live_root_key() {
    live_root_recipe | sha256sum | cut -c1-16
}

# Prints the path of the cached Debian root, building it (about 30 s) when missing. Under a
# lock, and renamed into place only when complete, so concurrent or interrupted runs never see
# half a root. Nobody writes to it afterwards: users mount it read-only or as an overlay's lower.
live_debian_root() {
    local key root
    key="$(live_root_key)"
    root="$LIVE_CACHE/debian12-$key"
    mkdir -p "$LIVE_CACHE"
    (
        flock 9
        if [ ! -d "$root" ]; then
            echo "building the Debian 12 root $root (mmdebstrap)" >&2
            rm -rf "$root.tmp"
            mkdir -p "$root.tmp"
            mmdebstrap --quiet --mode=root --variant=minbase \
                --include=systemd,systemd-sysv,ca-certificates,adduser,passwd \
                bookworm "$root.tmp" \
                "deb $LIVE_MIRROR bookworm main" \
                "deb $LIVE_MIRROR bookworm-updates main" \
                "deb $LIVE_SECURITY_MIRROR bookworm-security main" >&2
            live_root_recipe >"$root.tmp/.bearerd-ci-recipe"
            mv "$root.tmp" "$root"
        fi
    ) 9>"$LIVE_CACHE/lock"
    printf '%s\n' "$root"
}

# start_token_endpoint DIR CLIENT...: starts tests/live/token_endpoint.py with its files in
# DIR (port, log, gate) and sets ENDPOINT_PID and TOKEN_URL. The gate starts open.
start_token_endpoint() {
    local dir="$1"
    shift
    : >"$dir/endpoint.log"
    touch "$dir/gate"
    python3 "$LIVE_DIR/token_endpoint.py" --port-file "$dir/endpoint.port" \
        --log "$dir/endpoint.log" --gate "$dir/gate" "$@" 2>"$dir/endpoint.stderr" &
    ENDPOINT_PID=$!
    ENDPOINT_DIR="$dir"
    wait_until 20 test -s "$dir/endpoint.port" ||
        fail "the token endpoint did not start: $(cat "$dir/endpoint.stderr")"
    # shellcheck disable=SC2034 # for the scripts that source this file
    TOKEN_URL="http://127.0.0.1:$(cat "$dir/endpoint.port")/oauth/token"
}

stop_token_endpoint() {
    if [ -n "${ENDPOINT_PID:-}" ]; then
        kill "$ENDPOINT_PID" 2>/dev/null || true
        wait "$ENDPOINT_PID" 2>/dev/null || true
        ENDPOINT_PID=
    fi
}

close_gate() { rm -f "$ENDPOINT_DIR/gate"; }
open_gate() { touch "$ENDPOINT_DIR/gate"; }

# How many token requests reached the endpoint so far.
requests_received() {
    grep -c '"event": "received"' "$ENDPOINT_DIR/endpoint.log" || true
}

# more_requests_than N: more than N requests reached the endpoint.
more_requests_than() {
    [ "$(requests_received)" -gt "$1" ]
}

# gone PID: the process has exited.
gone() {
    ! kill -0 "$1" 2>/dev/null
}

# The last token issued (to client id $1, if given); empty when none was.
last_token() {
    { grep '"event": "answered"' "$ENDPOINT_DIR/endpoint.log" | grep '"status": 200' |
        grep -F -- "${1:-}" | tail -n 1 | sed 's/.*"token": "\([^"]*\)".*/\1/'; } || true
}

# Every token issued so far, one a line.
all_tokens() {
    { grep '"status": 200' "$ENDPOINT_DIR/endpoint.log" | sed 's/.*"token": "\([^"]*\)".*/\1/'; } || true
}

# The one step docs/operating.md documents for a Camunda Console credentials file: neither
# systemd's EnvironmentFile= nor `kubectl create secret --from-env-file` reads `export NAME='v'`.
camunda_env_from_console() {
    sed -e 's/^export //' -e "s/='\(.*\)'$/=\1/" "$1"
}
