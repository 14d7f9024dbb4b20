#!/usr/bin/env bash
# Running as a service and in a container: under a Docker-like seccomp
# profile that denies io_uring the client exits naming the seccomp filter
# and the shipped profile; under the shipped profile
# (dist/docker/seccomp-io-uring.json) two clients come up, tell systemd
# READY=1 through $NOTIFY_SOCKET, and ping each other.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_service_seccomp: io_uring refused by seccomp is named; the shipped profile works"

profile="$here/../dist/docker/seccomp-io-uring.json"
confine() { /usr/bin/python3 "$here/seccomp_exec.py" "$@"; }
if ! /usr/bin/python3 -c 'import seccomp' 2>/dev/null; then
    rl_fail "python3-seccomp is installed (bash .ci/setup)"
    rl_finish test_service_seccomp
fi

rl_switch
rl_attach srv "$RL_SERVER_IP/24"
rl_server_conf server >/dev/null
rl_start_server server srv
check "server listens" rl_wait_until 10 rl_server_listening srv || rl_finish test_service_seccomp
rl_attach a 10.91.0.10/24
rl_attach b 10.91.0.11/24

# What Docker's default profile does: io_uring_setup gives EPERM.
rl_client_conf denied >/dev/null
rl_spawn denied a /usr/bin/python3 "$here/seccomp_exec.py" --deny-io-uring "$profile" -- \
    "$RINGLINK" client --config "$RL_TMP/denied.toml"
check "a client without io_uring exits within 20 s" rl_wait_until 20 rl_exited denied
check "it says a seccomp filter blocks io_uring" rl_log_has denied 'seccomp filter blocks io_uring'
check "it names the fix (the shipped profile)" rl_log_has denied 'security-opt seccomp=dist/docker/seccomp-io-uring.json'
check_not "it does not blame the kernel or the sysctl" rl_log_has denied 'upgrade|io_uring_disabled = '

# The shipped profile, with a systemd notify socket for b.
notify="$RL_TMP/notify.sock"
rl_spawn notify b /usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(40)
print(s.recv(4096).decode(), flush=True)
' "$notify"
check "notify socket bound" rl_wait_until 5 test -S "$notify"
rl_client_conf a >/dev/null
rl_client_conf b >/dev/null
rl_spawn a a /usr/bin/python3 "$here/seccomp_exec.py" "$profile" -- "$RINGLINK" client --config "$RL_TMP/a.toml"
rl_spawn b b env NOTIFY_SOCKET="$notify" /usr/bin/python3 "$here/seccomp_exec.py" "$profile" -- \
    "$RINGLINK" client --config "$RL_TMP/b.toml"
check "client a up under the profile" rl_wait_until 20 rl_ready a
check "client b up under the profile" rl_wait_until 20 rl_ready b
check "b told systemd READY=1" rl_wait_until 10 rl_log_has notify '^READY=1$'
check "with the interface and address in STATUS" rl_log_has notify "^STATUS=rl0 up as $(rl_vip b)"
check_not "the profile lets a load its flow-steering program" rl_log_has a 'could not attach the flow steering'
check "ping a -> b (3 of 3)" rl_ping a "$(rl_vip b)" 3
check "ping b -> a (3 of 3)" rl_ping b "$(rl_vip a)" 3
rl_finish test_service_seccomp
