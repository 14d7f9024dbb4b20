#!/usr/bin/env bash
# Node keys and the Noise handshake between ringlink nodes (issue 14). Two
# sites behind NAT routers: each client creates its key file (0600) on
# first start, pins the other's key on first use (pins file), and the two
# complete a handshake that `ringlink status` shows on both ends; from then
# on their direct traffic is sealed with the session (the dataplane's
# session counters move, nothing goes in Candy's envelope). Then b is
# restarted on the same VIP with a new key file: a refuses the changed key
# with a log line naming the VIP and both fingerprints, counts it, keeps
# the old pin, and makes no session with the newcomer.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_handshake_keys: key files, first-use pins, a handshake shown in status, a changed key refused"

VB=10.77.0.20
rl_world_p2p plain plain || rl_finish
rl_p2p_client_conf b "address = \"$VB/24\"" >/dev/null
rl_start_client a a
rl_start_client b b
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a)
echo "  a = ${va:-?}, b = $VB"

mode_of() { stat -c %a "$1" 2>/dev/null; }
check "a's key file was created with mode 600" test "$(mode_of "$RL_TMP/a.key")" = 600
check "b's key file was created with mode 600" test "$(mode_of "$RL_TMP/b.key")" = 600

# A peer's handshake age is a number once a session exists.
has_session() { [ -n "$(rl_peer_eval "$1" "$2" 'p["handshake_secs"]' | grep -E '^[0-9.]+$')" ]; }
check "a shows a session with b" rl_wait_until 20 has_session a "$VB"
check "b shows a session with a" rl_wait_until 20 has_session b "${va:-none}"
check "a logged the completed handshake" rl_log_has a "handshake complete"
check "b logged the completed handshake" rl_log_has b "handshake complete"

fp_a=$(rl_status_get a 'd["key_fingerprint"]')
fp_b=$(rl_status_get b 'd["key_fingerprint"]')
echo "  fingerprints: a $fp_a, b $fp_b"
check "a pinned b's key by first use (status: b's fingerprint, tofu)" \
    test "$(rl_peer_eval a "$VB" 'p["key"]["fingerprint"] + " " + p["key"]["source"]')" = "$fp_b tofu"
check "b pinned a's key by first use" \
    test "$(rl_peer_eval b "${va:-none}" 'p["key"]["fingerprint"]')" = "$fp_a"
pub_b=$(rl_status_get b 'd["public_key"]')
check "a's pins file holds b's VIP and public key" grep -qF "$VB $pub_b" "$RL_TMP/a.pins"
check "the human status shows the key and the handshake age" \
    sh -c "timeout 10 '$RINGLINK' status --socket '$(rl_sock a)' | grep -qE '$fp_b \\(tofu\\) +[0-9]+s ago'"
sealed() { [ "$(rl_peer_eval "$1" "$2" 'p["sealing"]')" = session ]; }
check "a seals with b (status: session)" rl_wait_until 20 sealed a "$VB"
check "b seals with a (status: session)" rl_wait_until 20 sealed b "${va:-none}"
tx0=$(rl_status_get a 'd["session_tx"]'); rx0=$(rl_status_get b 'd["session_rx"]')
check "pings a -> b over the sealed direct path" rl_ping a "$VB" 5
moved() { rl_ge "$(rl_status_get "$1" "d[\"$2\"]")" "$3"; }
check "a sealed them with the session (session_tx grew by >= 5)" \
    rl_wait_until 5 moved a session_tx $(( ${tx0:-0} + 5 ))
check "b opened them with the session (session_rx grew by >= 5)" \
    rl_wait_until 5 moved b session_rx $(( ${rx0:-0} + 5 ))
check "b refused nothing (decrypt_failed, replayed, unsealed_refused all 0)" \
    test "$(rl_status_get b 'd["decrypt_failed"] + d["replayed"] + d["unsealed_refused"]')" = 0

# b comes back on the same VIP with another key.
rl_stop b
rl_client_conf b2 "stun = \"stun://$RL_SERVER_IP\"" "address = \"$VB/24\"" \
    "key_file = \"$RL_TMP/b-new.key\"" >/dev/null
rl_start_client b2 b
check "b (new key) connected on the same VIP" rl_wait_until 20 rl_ready b2
# The status names the key once the node is up, a moment after the login.
has_key() { [ -n "$(rl_status_get b2 'd["key_fingerprint"] or ""')" ]; }
check "b's status names its key" rl_wait_until 10 has_key
fp_new=$(rl_status_get b2 'd["key_fingerprint"]')
echo "  b's new fingerprint: $fp_new"
check "b's new key differs from the old one" test -n "$fp_new" -a "$fp_new" != null -a "$fp_new" != "$fp_b"
refusal="refusing a changed key for $VB: pinned $fp_b .*offered $fp_new"
check "a refused the changed key in a log line naming the VIP and both fingerprints" \
    rl_wait_until 20 rl_log_has a "$refusal"
refused() { rl_ge "$(rl_status_get a 'd["handshake"]["keys_refused"]')" 1; }
check "a counted the refusal (status handshake.keys_refused)" rl_wait_until 5 refused
check "a still pins b's old key" \
    test "$(rl_peer_eval a "$VB" 'p["key"]["fingerprint"]')" = "$fp_b"
no_session_b2() { ! has_session b2 "${va:-none}"; }
check "the new b gets no session with a (10 s)" rl_holds_for 10 no_session_b2
check "a logged the refusal once, not once per announcement" \
    test "$(rl_log_count a "refusing a changed key")" -eq 1
rl_finish test_handshake_keys
