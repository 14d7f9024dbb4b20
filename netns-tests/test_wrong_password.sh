#!/usr/bin/env bash
# A third client with the wrong password is refused: the server logs
# "refused" with a reason, the client's status never shows connected, and
# the two good clients keep pinging each other meanwhile.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_wrong_password: a client with a bad password is refused, the others carry on"

rl_world_relay 2 || rl_finish
check "client a connected" rl_wait_until 20 rl_ready a
check "client b connected" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
check "ping a -> b before the intruder" rl_wait_until 15 rl_ping_once a "${vb:-none}"

rl_attach c 10.91.0.30/24
RL_CLIENT_PASSWORD="not-the-secret" rl_client_conf c >/dev/null
rl_start_client c c
check "server logs a refusal for the bad client" rl_wait_until 15 rl_log_has server refused
echo "  server said: $(grep -m1 refused "$(rl_log_file server)" | cut -c1-200)"
check "the refusal carries a reason (more than the word)" rl_log_has server 'refused.*[[:alpha:]]{3,}.*|[[:alpha:]]{3,}.*refused'
check "bad client's status answers" rl_wait_until 10 rl_status c
check_not "bad client never shows connected (watched 6 s)" rl_wait_until 6 rl_connected c
check "ping a -> b while the bad client retries" rl_ping a "${vb:-none}" 5
check "ping b -> a while the bad client retries" rl_ping b "${va:-none}" 5
check "a still connected" rl_connected a
check "b still connected" rl_connected b
check "a kept its address" test "$(rl_vip a)" = "$va"
check "b kept its address" test "$(rl_vip b)" = "$vb"
cerr=$(rl_status_get c 'd["last_error"]')
echo "  bad client's last_error: ${cerr:-?}"
rl_finish test_wrong_password
