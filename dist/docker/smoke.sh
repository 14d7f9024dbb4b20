#!/usr/bin/env bash
# Runs a built image the way the README's run line does, in a network
# namespace of its own: a server container and a client container log in,
# the client's TUN device and io_uring workers come up, `netcheck` inside
# the container finds io_uring, and under podman's default seccomp profile
# the client refuses to start and names the filter.
#
# Usage (root): bash dist/docker/smoke.sh [image]   (default: ringlink)
# Needs podman with runc (crun refuses hybrid cgroup hosts).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
image=${1:-ringlink}
ns=rl-smoke-$$
work=$(mktemp -d /tmp/ringlink-smoke.XXXXXX)
pass=0; fail=0
ok() { echo "  ok    $1"; pass=$((pass + 1)); }
bad() { echo "  FAIL  $1"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
cleanup() {
    podman --runtime runc rm -f "$ns-server" "$ns-client" >/dev/null 2>&1
    ip netns del "$ns" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# Podman's defaults ask for more open files and processes than some hosts
# allow; these fit under common hard limits.
run=(podman --runtime runc run --ulimit nofile=20000:20000 --ulimit nproc=32768:32768
    --network "ns:/run/netns/$ns")
gateway=(--cap-add NET_ADMIN --cap-add BPF --device /dev/net/tun)
profile=(--security-opt "seccomp=$here/seccomp-io-uring.json")

ip netns add "$ns" || exit 1
ip -n "$ns" link set lo up
cat >"$work/server.toml" <<'EOF'
listen = "127.0.0.1:7443"
password = "smoke-test"
pool = "10.77.0.0/24"
EOF
cat >"$work/client.toml" <<'EOF'
server = "ws://127.0.0.1:7443"
password = "smoke-test"
EOF

echo "smoke: $image"
check "ringlink --version answers" "${run[@]}" --rm "$image" --version
"${run[@]}" -d --name "$ns-server" -v "$work/server.toml:/etc/ringlink/server.toml:ro" \
    "$image" server --config /etc/ringlink/server.toml >/dev/null
"${run[@]}" -d --name "$ns-client" "${gateway[@]}" "${profile[@]}" \
    --security-opt no-new-privileges -v "$work/client.toml:/etc/ringlink/client.toml:ro" "$image" >/dev/null
up() { ip -n "$ns" -4 addr show dev rl0 2>/dev/null | grep -q 'inet 10\.77\.0\.'; }
wait_for() { local i; for ((i = 0; i < 60; i++)); do "$@" && return 0; sleep 0.5; done; return 1; }
check "the client logs in and rl0 comes up with a pool address (30 s)" wait_for up
logs() { podman logs "$ns-client" 2>&1; }
check "the client's io_uring workers run" eval 'logs | grep -q "interface up.*workers="'
check "ringlink status answers inside the container" \
    eval 'podman exec "$ns-client" ringlink status | grep -q "10\.77\.0\."'
check "netcheck in the container finds io_uring" \
    eval '"${run[@]}" --rm "${gateway[@]}" "${profile[@]}" -v "$work/client.toml:/etc/ringlink/client.toml:ro" "$image" netcheck --config /etc/ringlink/client.toml 2>&1 | grep -q "io_uring  *available"'
podman rm -f "$ns-client" >/dev/null 2>&1

# Under the default seccomp profile io_uring is denied: the client must say
# so and exit, not run half-way.
out=$("${run[@]}" --rm --name "$ns-client" "${gateway[@]}" \
    -v "$work/client.toml:/etc/ringlink/client.toml:ro" "$image" 2>&1)
rc=$?
check "under the default profile the client exits non-zero" test "$rc" -ne 0
check "and names the seccomp filter" eval 'grep -qi seccomp <<<"$out"'
echo "  it said: $(grep -i seccomp <<<"$out" | head -1 | cut -c1-160)"
echo "smoke: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
