#!/usr/bin/env bash
# The Debian package under a real systemd: boots a Debian 12 root (cached, see lib.sh) with
# systemd as PID 1 under systemd-nspawn, installs the .deb there and drives the unit with
# systemctl against tests/live/token_endpoint.py on the host's loopback (the container shares
# the host's network). It proves what docs/operating.md ("What CI proves live") lists, and
# leaves the cached root untouched (the container writes to an overlay thrown away at the end).
#
#   tests/live/systemd.sh target/debian/bearerd_VERSION_ARCH.deb     (as root)
set -euo pipefail

# shellcheck source=tests/live/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

{ [ $# -eq 1 ] && [ -f "$1" ]; } || fail "usage: $0 PATH/TO/bearerd.deb"
deb="$(realpath "$1")"
[ "$(id -u)" -eq 0 ] || fail "needs root (mount, systemd-nspawn, nsenter)"
for tool in mmdebstrap systemd-nspawn nsenter python3; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
repo="$(cd "$LIVE_DIR/../.." && pwd)"

root="$(live_debian_root)"
work="$(mktemp -d /var/tmp/bearerd-live-systemd.XXXXXX)"
machine="bearerd-ci-$$"
nspawn_pid=
leader=

cleanup() {
    local status=$?
    if [ "$status" -ne 0 ] && [ -n "$leader" ]; then
        echo "---- journalctl -u bearerd (last 40 lines) ----" >&2
        ct journalctl -u bearerd --no-pager -n 40 >&2 || true
    fi
    stop_token_endpoint
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true # nspawn asks the container's systemd to power off
        wait_until 30 gone "$nspawn_pid" || kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if mountpoint -q "$work/merged"; then
        umount "$work/merged" || umount -l "$work/merged" || true
    fi
    rm -rf "$work"
    rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null || true
    exit "$status"
}
trap cleanup EXIT

# ct COMMAND...: runs COMMAND inside the container, in all its namespaces, with a clean env.
ct() {
    nsenter -t "$leader" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
prop() {
    ct systemctl show -P "$1" bearerd
}
is_state() {
    [ "$(prop ActiveState)" = "$1" ]
}
watchdog_later_than() {
    [ "$(prop WatchdogTimestampMonotonic)" -gt "$1" ]
}
journal_has() {
    ct journalctl -u bearerd -o cat --no-pager | grep -q -- "$1"
}

mkdir -p "$work/upper" "$work/work" "$work/merged" "$work/endpoint"
mount -t overlay overlay \
    -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/work" "$work/merged"
install -m 0644 "$deb" "$work/merged/root/bearerd.deb"

secret="live-$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')"
camunda_id="$(sed -n "s/^export CAMUNDA_CLIENT_ID='\(.*\)'$/\1/p" "$LIVE_DIR/camunda-console.txt")"
camunda_secret="$(sed -n "s/^export CAMUNDA_CLIENT_SECRET='\(.*\)'$/\1/p" "$LIVE_DIR/camunda-console.txt")"
start_token_endpoint "$work/endpoint" \
    "tasklist-bot:$secret:tasklist.camunda.io" "$camunda_id:$camunda_secret"

# --register=no --keep-unit: this machine's PID 1 is not systemd, so there is no machined and
# no bus to register with or to allocate a scope from. No --private-network: the container
# reaches the token endpoint on the host's 127.0.0.1.
systemd-nspawn --quiet --boot --register=no --keep-unit --machine="$machine" \
    --directory="$work/merged" </dev/null >"$work/console.log" 2>&1 &
nspawn_pid=$!
find_leader() {
    leader="$(pgrep -P "$nspawn_pid" | head -n 1 || true)"
    [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ]
}
wait_until 60 find_leader || fail "the container did not boot: $(tail -n 5 "$work/console.log")"
wait_until 60 ct test -S /run/systemd/private || fail "systemd in the container did not come up"
state="$(ct systemctl is-system-running --wait || true)"
echo "container $machine booted ($state), systemd $(ct systemctl --version | sed -n '1s/systemd \([0-9]*\).*/\1/p') as PID 1"
[ "$state" = running ] || ct systemctl --failed --no-pager || true

# ---- install: enabled and started by the postinst
ct env DEBIAN_FRONTEND=noninteractive dpkg -i /root/bearerd.deb </dev/null >/dev/null
[ "$(ct systemctl is-enabled bearerd)" = enabled ] || fail "bearerd is not enabled after dpkg -i"
is_state active || fail "bearerd is $(prop ActiveState) after dpkg -i, not active"
pass "dpkg -i installs, enables and starts bearerd (the shipped config, no client)"

# ---- the configuration: the secret only as a credential, a short watchdog, a 1 s stop budget
ct systemctl stop bearerd
install -m 0600 /dev/null "$work/merged/etc/bearerd/tasklist.secret"
printf '%s\n' "$secret" >"$work/merged/etc/bearerd/tasklist.secret"
mkdir -p "$work/merged/etc/systemd/system/bearerd.service.d"
cat >"$work/merged/etc/systemd/system/bearerd.service.d/live.conf" <<'EOF'
[Service]
LoadCredential=tasklist:/etc/bearerd/tasklist.secret
# The packaged 60 s would mean a first pet after 30 s; 6 s shows pets (every 3 s) within the
# test and still leaves a busy machine 3 s of slack before systemd would kill bearerd.
WatchdogSec=6s
# `systemctl stop` must be done within a second: later, systemd kills it (Result=timeout).
TimeoutStopSec=1s
EOF
# Written in place: the file keeps the postinst's root:bearerd 0640.
cat >"$work/merged/etc/bearerd/bearerd.toml" <<EOF
[clients.tasklist]
token_url = "$TOKEN_URL"
client_id = "tasklist-bot"
client_secret_file = "\${CREDENTIALS_DIRECTORY}/tasklist"
audience = "tasklist.camunda.io"
auth_method = "client_secret_json"

[[clients.tasklist.output]]
path = "/run/bearerd/tasklist.token"
mode = "0640"
EOF
ct systemctl daemon-reload
if ct setpriv --reuid=bearerd --regid=bearerd --init-groups cat /etc/bearerd/tasklist.secret \
    >/dev/null 2>&1; then
    fail "user bearerd can read /etc/bearerd/tasklist.secret itself; the test needs it root-only"
fi

# ---- start: active only once READY=1, i.e. after the first token is on disk
close_gate
before="$(requests_received)"
ct systemctl start --no-block bearerd
wait_until 30 more_requests_than "$before" ||
    fail "no token request reached the endpoint after systemctl start"
is_state activating || fail "bearerd is $(prop ActiveState) while its first token request is held, not activating"
ct test ! -e /run/bearerd/tasklist.token || fail "a token file exists before the endpoint answered"
open_gate
wait_until 30 is_state active || fail "bearerd did not become active: $(prop ActiveState)/$(prop SubState)"
token="$(last_token tasklist-bot)"
[ -n "$token" ] || fail "the endpoint issued no token to tasklist-bot (was the credential's secret sent?)"
[ "$(ct cat /run/bearerd/tasklist.token)" = "$token" ] || fail "/run/bearerd/tasklist.token is not the issued token"
pass "systemctl start: activating while the token request is in flight, active after READY=1, with the token on disk"
pass "the client secret came from LoadCredential= (user bearerd cannot read the source file)"
status_text="$(prop StatusText)"
echo "   StatusText=$status_text"

# ---- /run/bearerd and the token's mode: what docs/operating.md promises
[ "$(ct stat -c '%a %U:%G' /run/bearerd)" = "750 bearerd:bearerd" ] ||
    fail "/run/bearerd is $(ct stat -c '%a %U:%G' /run/bearerd), not 750 bearerd:bearerd"
[ "$(ct stat -c '%a %U:%G' /run/bearerd/tasklist.token)" = "640 bearerd:bearerd" ] ||
    fail "tasklist.token is $(ct stat -c '%a %U:%G' /run/bearerd/tasklist.token), not 640 bearerd:bearerd"
ct useradd --system --no-create-home --groups bearerd live-reader
[ "$(ct setpriv --reuid=live-reader --regid=live-reader --init-groups cat /run/bearerd/tasklist.token)" = "$token" ] ||
    fail "a member of group bearerd cannot read the token"
if ct setpriv --reuid=nobody --regid=nogroup --clear-groups cat /run/bearerd/tasklist.token >/dev/null 2>&1; then
    fail "a user outside group bearerd can read the token"
fi
pass "/run/bearerd is 0750 bearerd:bearerd; a 0640 output is readable by group bearerd and nobody else"

# ---- the sandbox as systemd sees it with the service running
ct systemd-analyze security --threshold=15 --no-pager bearerd | tail -n 1 ||
    fail "live systemd-analyze security bearerd is above 1.5"
pass "live systemd-analyze security bearerd stays at or below 1.5"

# ---- the watchdog is fed (WATCHDOG=1 every WatchdogSec/2)
[ "$(prop WatchdogUSec)" = 6s ] || fail "WatchdogUSec is $(prop WatchdogUSec)"
pets="$(prop WatchdogTimestampMonotonic)"
wait_until 20 watchdog_later_than "$pets" || fail "WatchdogTimestamp did not advance within 20 s"
pets="$(prop WatchdogTimestampMonotonic)"
wait_until 20 watchdog_later_than "$pets" || fail "WatchdogTimestamp advanced once, then stopped"
[ "$(prop NRestarts)" = 0 ] || fail "bearerd was restarted $(prop NRestarts) times"
pass "the watchdog is fed: WatchdogTimestamp advances twice, no restart"

# ---- systemctl reload: SIGHUP reloads, and the edit takes effect in the same process
pid="$(prop MainPID)"
cat >>"$work/merged/etc/bearerd/bearerd.toml" <<'EOF'

[[clients.tasklist.output]]
path = "/run/bearerd/tasklist.header"
format = "header"
mode = "0640"
EOF
ct systemctl reload bearerd
wait_until 30 ct test -s /run/bearerd/tasklist.header || fail "the new output did not appear after systemctl reload"
[ "$(ct cat /run/bearerd/tasklist.header)" = "Authorization: Bearer $token" ] || fail "tasklist.header is not the token's header"
wait_until 30 journal_has "reloading (SIGHUP)" ||
    fail "bearerd never logged 'reloading (SIGHUP)'"
[ "$(prop MainPID)" = "$pid" ] || fail "systemctl reload replaced the process"
pass "systemctl reload: SIGHUP reached bearerd, the new output appeared, same process"

# ---- systemctl restart: the saved token is reused, no request
received="$(requests_received)"
reused="$(ct journalctl -u bearerd -o cat --no-pager | grep -c 'reusing the saved token' || true)"
ct systemctl restart bearerd
is_state active || fail "bearerd is $(prop ActiveState) after restart"
[ "$(prop MainPID)" != "$pid" ] || fail "systemctl restart kept the same process"
[ "$(requests_received)" = "$received" ] || fail "systemctl restart sent a token request"
[ "$(ct cat /run/bearerd/tasklist.token)" = "$token" ] || fail "the token changed across the restart"
[ "$(ct journalctl -u bearerd -o cat --no-pager | grep -c 'reusing the saved token')" -gt "$reused" ] ||
    fail "the restarted bearerd did not log 'reusing the saved token'"
pass "systemctl restart: the saved token is reused, no request reached the endpoint"

# ---- Camunda Console's credentials as EnvironmentFile=, with examples/camunda-console.toml
ct systemctl stop bearerd
install -m 0600 /dev/null "$work/merged/etc/bearerd/camunda.env"
# The documented step, then the endpoint's URL in place of Camunda's.
camunda_env_from_console "$LIVE_DIR/camunda-console.txt" |
    sed "s|^CAMUNDA_OAUTH_URL=.*|CAMUNDA_OAUTH_URL=$TOKEN_URL|" >"$work/merged/etc/bearerd/camunda.env"
cat "$repo/examples/camunda-console.toml" >"$work/merged/etc/bearerd/bearerd.toml"
cat >"$work/merged/etc/systemd/system/bearerd.service.d/camunda.conf" <<'EOF'
[Service]
EnvironmentFile=/etc/bearerd/camunda.env
EOF
ct systemctl daemon-reload
ct systemctl start bearerd
is_state active || fail "bearerd with the Camunda example is $(prop ActiveState)"
for component in tasklist operate zeebe; do
    line="$(grep '"event": "answered"' "$ENDPOINT_DIR/endpoint.log" | grep '"status": 200' |
        grep -F "\"audience\": \"$component.camunda.io\"" | grep -F "\"client_id\": \"$camunda_id\"" | tail -n 1 || true)"
    [ -n "$line" ] || fail "no token was issued for audience $component.camunda.io"
    issued="$(printf '%s\n' "$line" | sed 's/.*"token": "\([^"]*\)".*/\1/')"
    [ "$(ct cat "/run/bearerd/$component.token")" = "$issued" ] || fail "/run/bearerd/$component.token is not the issued token"
done
if journal_has 'Ignoring invalid environment assignment'; then
    fail "systemd ignored lines of the converted Camunda file"
fi
pass "EnvironmentFile= takes the converted Console file: Tasklist, Operate and Zeebe tokens with their audiences"

# ---- systemctl stop: exit 0, within the 1 s TimeoutStopSec
started="$(date +%s%N)"
ct systemctl stop bearerd || fail "systemctl stop failed"
took_ms=$((($(date +%s%N) - started) / 1000000))
[ "$(prop Result)" = success ] || fail "stop Result=$(prop Result) (timeout means it outlived TimeoutStopSec=1s)"
{ [ "$(prop ExecMainCode)" = 1 ] && [ "$(prop ExecMainStatus)" = 0 ]; } ||
    fail "bearerd did not exit 0 on SIGTERM (code $(prop ExecMainCode), status $(prop ExecMainStatus))"
ct test ! -e /run/bearerd || fail "/run/bearerd is still there after stop"
pass "systemctl stop: bearerd exited 0 within TimeoutStopSec=1s (systemctl took ${took_ms} ms); /run/bearerd removed"

# ---- the same package again: restarted cleanly, tokens reused
ct systemctl start bearerd
pid="$(prop MainPID)"
received="$(requests_received)"
ct env DEBIAN_FRONTEND=noninteractive dpkg -i /root/bearerd.deb </dev/null >/dev/null
is_state active || fail "bearerd is $(prop ActiveState) after reinstalling"
[ "$(prop MainPID)" != "$pid" ] || fail "reinstalling did not restart bearerd"
[ "$(prop Result)" = success ] || fail "the restart on reinstall ended with Result=$(prop Result)"
[ "$(requests_received)" = "$received" ] || fail "the restart on reinstall sent token requests"
ct grep -q CAMUNDA_OAUTH_URL /etc/bearerd/bearerd.toml || fail "reinstalling replaced the edited config"
pass "dpkg -i of the same package restarts bearerd cleanly (kept config, tokens reused)"

# ---- purge
ct env DEBIAN_FRONTEND=noninteractive dpkg --purge bearerd </dev/null >/dev/null 2>"$work/purge.err" ||
    fail "dpkg --purge failed: $(cat "$work/purge.err")"
[ "$(prop LoadState)" = not-found ] || fail "the unit is still $(prop LoadState) after purge"
# No procps in the root (no pgrep): look for the process name in /proc directly.
if ct sh -c 'grep -qx bearerd /proc/[0-9]*/comm' 2>/dev/null; then
    fail "a bearerd process survived the purge"
fi
for path in /usr/bin/bearerd /usr/lib/systemd/system/bearerd.service /etc/bearerd/bearerd.toml /run/bearerd; do
    ct test ! -e "$path" || fail "$path is still there after dpkg --purge"
done
pass "dpkg --purge stops bearerd and removes the binary, the unit, the config and /run/bearerd"

# ---- the journal: no secret, no token (every field of every entry since boot)
ct journalctl -b -o export --no-pager >"$work/journal"
grep -q 'token refreshed' "$work/journal" || fail "the journal holds no bearerd log at all"
{
    printf '%s\n' "$secret" "$camunda_secret"
    all_tokens
} >"$work/needles"
[ "$(wc -l <"$work/needles")" -ge 5 ] || fail "expected at least 3 issued tokens to look for"
if grep -F -f "$work/needles" "$work/journal" >/dev/null; then
    fail "the journal holds a secret or a token"
fi
pass "the journal holds no client secret and none of the $(($(wc -l <"$work/needles") - 2)) issued tokens"
