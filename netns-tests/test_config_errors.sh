#!/usr/bin/env bash
# Config errors: the process exits with code 2 and the message names the key.
# Each case runs in an empty namespace (only lo), so a config that is wrongly
# accepted cannot reach anything.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_config_errors: bad configs exit 2 and name the key"
rl_ns_add cfg

# case <label> <server|client> <key that must be named> <toml text>
case_() {
    local label=$1 kind=$2 key=$3 text=$4
    local f="$RL_TMP/cfg-$label.toml" rc
    printf '%s\n' "$text" >"$f"
    timeout --foreground 10 ip netns exec "$(rl_ns cfg)" "$RINGLINK" "$kind" --config "$f" >"$RL_TMP/cfg-$label.out" 2>&1
    rc=$?
    local msg; msg=$(head -c 300 "$RL_TMP/cfg-$label.out" | tr '\n' ' ')
    check "$label: exit code 2 (got $rc)" test "$rc" -eq 2
    check "$label: message names \`$key\`: $msg" grep -q -- "$key" "$RL_TMP/cfg-$label.out"
}

S_OK='listen = "10.91.0.1:7443"
password = "secret"'
C_OK="server = \"ws://10.91.0.1:7443\"
password = \"secret\"
control_socket = \"$RL_TMP/cfg.sock\""

case_ client-unknown-key client bogus_key "$C_OK
bogus_key = 1"
case_ client-bad-address client address "$C_OK
address = \"10.77.0.300/24\""
case_ client-bad-prefix client address "$C_OK
address = \"10.77.0.20/33\""
case_ client-bad-server client server 'server = "http://10.91.0.1:7443"
password = "secret"'
case_ client-bad-mtu client mtu "$C_OK
mtu = 70000"
case_ server-unknown-key server colour "$S_OK
pool = \"10.77.0.0/24\"
colour = \"blue\""
case_ server-bad-pool server pool "$S_OK
pool = \"10.77.0/24\""
case_ server-pool-no-prefix server pool "$S_OK
pool = \"10.77.0.0\""
case_ server-bad-listen server listen 'listen = "10.91.0.1"
password = "secret"
pool = "10.77.0.0/24"'
case_ server-missing-password server password 'listen = "10.91.0.1:7443"
pool = "10.77.0.0/24"'
check "the good-path control socket was never created" test ! -e "$RL_TMP/cfg.sock"
rl_finish test_config_errors
