#!/usr/bin/env bash
# bearerd's container image, built from packaging/Dockerfile and run the way
# packaging/kubernetes/ runs it: read-only root, uid/gid 65532, no capabilities, the config and
# the secret mounted read-only as directories, the token directory a writable volume shared
# with a second container. No registry serves base images here, so the runtime stage starts
# from the cached Debian 12 root (lib.sh) imported into podman, and the builder stage is
# replaced by the release binary CI already built (--build-context builder=DIR).
#
#   tests/live/container.sh target/release/bearerd     (as root)
set -euo pipefail

# shellcheck source=tests/live/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

{ [ $# -eq 1 ] && [ -x "$1" ]; } || fail "usage: $0 PATH/TO/release/bearerd"
binary="$(realpath "$1")"
[ "$(id -u)" -eq 0 ] || fail "needs root (podman with host networking and fixed uids)"
for tool in podman runc python3 curl; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
repo="$(cd "$LIVE_DIR/../.." && pwd)"
k8s="$repo/packaging/kubernetes"

work="$(mktemp -d /var/tmp/bearerd-live-container.XXXXXX)"
image="localhost/bearerd-ci/bearerd:run-$$"
sidecar="bearerd-ci-sidecar-$$"

cleanup() {
    local status=$?
    if [ "$status" -ne 0 ] && podman container exists "$sidecar" 2>/dev/null; then
        echo "---- podman logs $sidecar ----" >&2
        podman logs "$sidecar" >&2 || true
    fi
    podman rm -f -t 0 "$sidecar" >/dev/null 2>&1 || true
    podman rmi -f "$image" >/dev/null 2>&1 || true
    stop_token_endpoint
    [ -n "${LIVE_KEEP:-}" ] || rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

# crun refuses this kind of machine's hybrid cgroup setup; runc with cgroupfs works. There is
# no journald on the host for podman's events, and the default ulimits cannot be applied.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"

# ---- the base image: the cached Debian root, imported once per machine and recipe
root="$(live_debian_root)"
base="localhost/bearerd-ci/debian12:$(live_root_key)"
(
    flock 9
    if ! podman image exists "$base"; then
        echo "importing $root as $base" >&2
        tar -C "$root" -c . | podman import --quiet - "$base" >/dev/null
    fi
) 9>"$LIVE_CACHE/lock"

# ---- the image: packaging/Dockerfile's runtime stage on that base, with the built binary
mkdir -p "$work/builder/out" "$work/context"
install -m 0755 "$binary" "$work/builder/out/bearerd"
podman build --quiet --pull=never -f "$repo/packaging/Dockerfile" \
    --build-arg RUNTIME_IMAGE="$base" --build-context builder="$work/builder" \
    -t "$image" "$work/context" >/dev/null
[ "$(podman image inspect -f '{{.Config.User}}' "$image")" = 65532:65532 ] || fail "the image does not run as 65532:65532"
pass "packaging/Dockerfile builds with RUNTIME_IMAGE=$base and the release binary as the builder stage"

# ---- what the manifests run, checked against them so this test follows their changes
grep -qF 'args: ["run", "--once", "--deadline", "60s", "-c", "/etc/bearerd/bearerd.toml"]' "$k8s/job-init.yaml" ||
    fail "job-init.yaml's bearerd args changed; update $0"
grep -qF 'args: ["run", "-c", "/etc/bearerd/bearerd.toml"]' "$k8s/deployment-sidecar.yaml" ||
    fail "deployment-sidecar.yaml's bearerd args changed; update $0"
for mount in /etc/bearerd /etc/bearerd-secrets /run/bearerd /var/run/tokens; do
    grep -q "mountPath: $mount\$" "$k8s/deployment-sidecar.yaml" || fail "deployment-sidecar.yaml no longer mounts $mount"
done

secret="live-$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')"
mkdir -p "$work/endpoint"
start_token_endpoint "$work/endpoint" "tasklist-bot:$secret:tasklist.camunda.io" "operate-bot:operate-secret"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# The ConfigMap's bearerd.toml, with the test endpoint and a free port (host networking here;
# the pod has a network namespace of its own).
awk '/^  bearerd.toml: \|/ { on = 1; next }
     on && /^    / { print substr($0, 5); next }
     on && /^$/ { print; next }
     on { exit }' "$k8s/configmap.yaml" >"$work/bearerd.toml"
{ grep -q '^token_url = "https://login.cloud.camunda.io/oauth/token"$' "$work/bearerd.toml" &&
    grep -q '^listen = "0.0.0.0:9161"$' "$work/bearerd.toml"; } ||
    fail "could not read bearerd.toml out of configmap.yaml"
sed -i -e "s|^token_url = .*|token_url = \"$TOKEN_URL\"|" \
    -e "s|^listen = .*|listen = \"0.0.0.0:$port\"|" "$work/bearerd.toml"

# Volumes as the kubelet makes them: ConfigMap and Secret files root:fsGroup 0440
# (defaultMode 288), an emptyDir the fsGroup may write to.
volume_dir() { install -d -o root -g 65532 -m "$2" "$1"; }
volume_file() { install -o root -g 65532 -m 0440 /dev/null "$1" && cat >"$1"; }
volume_dir "$work/config" 0755
volume_file "$work/config/bearerd.toml" <"$work/bearerd.toml"
volume_dir "$work/secrets" 0755
printf '%s' "$secret" | volume_file "$work/secrets/tasklist"

# The securityContext of both manifests.
restricted=(--pull=never --read-only --read-only-tmpfs=false --user 65532:65532 --group-add 65532
    --cap-drop=all --security-opt=no-new-privileges --network=host --memory=64m)

# ---- run --once as the init container: exit 0 and the files
volume_dir "$work/tokens-init" 2770
podman run --rm "${restricted[@]}" \
    -v "$work/config:/etc/bearerd:ro" -v "$work/secrets:/etc/bearerd-secrets:ro" \
    -v "$work/tokens-init:/run/bearerd" \
    "$image" run --once --deadline 60s -c /etc/bearerd/bearerd.toml 2>"$work/init.log" ||
    fail "run --once exited $? with a working endpoint: $(cat "$work/init.log")"
token="$(last_token tasklist-bot)"
[ -n "$token" ] || fail "run --once got no token"
[ "$(cat "$work/tokens-init/tasklist.token")" = "$token" ] || fail "tasklist.token is not the issued token"
[ "$(cat "$work/tokens-init/tasklist.header")" = "Authorization: Bearer $token" ] || fail "tasklist.header is wrong"
grep -q "^TASKLIST_TOKEN=" "$work/tokens-init/tasklist.env" || fail "tasklist.env is wrong"
for file in tasklist.token tasklist.header tasklist.env; do
    [ "$(stat -c '%a %u' "$work/tokens-init/$file")" = "640 65532" ] ||
        fail "$file is $(stat -c '%a %u' "$work/tokens-init/$file"), not 640 65532"
done
pass "run --once (init container): exit 0, the three files, 0640 and owned by 65532"

# ---- run --once with a client the endpoint refuses: exit 1, naming it
volume_dir "$work/config-bad" 0755
{
    cat "$work/bearerd.toml"
    printf '\n[clients.operate]\ntoken_url = "%s"\nclient_id = "operate-bot"\n' "$TOKEN_URL"
    printf 'client_secret_file = "/etc/bearerd-secrets/operate"\n'
    printf '\n[[clients.operate.output]]\npath = "/run/bearerd/operate.token"\n'
} | volume_file "$work/config-bad/bearerd.toml"
printf 'not-the-secret' | volume_file "$work/secrets/operate"
volume_dir "$work/tokens-bad" 2770
set +e
podman run --rm "${restricted[@]}" \
    -v "$work/config-bad:/etc/bearerd:ro" -v "$work/secrets:/etc/bearerd-secrets:ro" \
    -v "$work/tokens-bad:/run/bearerd" \
    "$image" run --once --deadline 60s -c /etc/bearerd/bearerd.toml >"$work/bad.log" 2>&1
status=$?
set -e
[ "$status" -eq 1 ] || fail "run --once with a refused client exited $status, not 1: $(cat "$work/bad.log")"
{ grep -q 'failed: operate\b' "$work/bad.log" && grep -q 'invalid_client' "$work/bad.log"; } ||
    fail "run --once's output does not name the failing client: $(cat "$work/bad.log")"
[ "$(cat "$work/tokens-bad/tasklist.token")" = "$(last_token tasklist-bot)" ] ||
    fail "the working client got no token beside the refused one"
pass "run --once with a refused client: exit 1, the log names client operate (invalid_client)"

# ---- run as the sidecar: /readyz holds the app back until the token is on disk
volume_dir "$work/tokens" 2770
close_gate
before="$(requests_received)"
podman run -d --name "$sidecar" "${restricted[@]}" \
    -v "$work/config:/etc/bearerd:ro" -v "$work/secrets:/etc/bearerd-secrets:ro" \
    -v "$work/tokens:/run/bearerd" \
    "$image" run -c /etc/bearerd/bearerd.toml >/dev/null
probe() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/$1" || true; }
probe_is() { [ "$(probe "$1")" = "$2" ]; }
wait_until 30 more_requests_than "$before" || fail "the sidecar sent no token request"
wait_until 30 probe_is healthz 200 || fail "/healthz never answered 200"
[ "$(probe readyz)" = 503 ] || fail "/readyz answered $(probe readyz) while the token request is held, not 503"
open_gate
wait_until 60 probe_is readyz 200 || fail "/readyz never answered 200 (the startupProbe would fail)"
token="$(last_token tasklist-bot)"
pass "run (sidecar): /healthz 200 at once, /readyz 503 until the token is on disk, then 200"

# The app container: another user, in the fsGroup, the volume read-only at /var/run/tokens.
reader=(--pull=never --read-only --read-only-tmpfs=false --user 1000:1000 --cap-drop=all
    --security-opt=no-new-privileges --network=none -v "$work/tokens:/var/run/tokens:ro"
    --entrypoint sh "$image" -c 'cat /var/run/tokens/tasklist.header')
header="$(podman run --rm --group-add 65532 "${reader[@]}")" || fail "the app container could not read the header"
[ "$header" = "Authorization: Bearer $token" ] || fail "the app container read '$header'"
if podman run --rm "${reader[@]}" >/dev/null 2>&1; then
    fail "a container outside the fsGroup can read the token"
fi
pass "a second container (uid 1000, fsGroup 65532) reads the token from the shared volume; without the group it cannot"

podman stop -t 10 "$sidecar" >/dev/null
[ "$(podman inspect -f '{{.State.ExitCode}}' "$sidecar")" = 0 ] ||
    fail "the sidecar exited $(podman inspect -f '{{.State.ExitCode}}' "$sidecar") on SIGTERM, not 0"
pass "the sidecar exits 0 on SIGTERM (podman stop)"
