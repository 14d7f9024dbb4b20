#!/usr/bin/env bash
# wss: the server serves TLS with a certificate for its IP; a client that
# trusts the CA (tls_ca) connects and carries traffic; a client that does not
# trust it (no tls_ca, no tls_insecure) never connects, so the certificate is
# really checked.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
rl_init "$here/.."
echo "test_wss: TLS WebSocket with a private CA"

certs="$RL_TMP/certs"
check "certificates generated (openssl)" rl_make_certs "$certs" "$RL_SERVER_IP" || rl_finish test_wss
rl_switch
rl_attach srv "$RL_SERVER_IP/24"
rl_server_conf server "tls_cert = \"$certs/cert.pem\"" "tls_key = \"$certs/key.pem\"" >/dev/null
rl_start_server server srv
check "wss server listens" rl_wait_until 10 rl_server_listening srv
url="wss://$RL_SERVER_IP:$RL_SERVER_PORT"
for n in a b; do
    rl_attach "$n" "10.91.0.1$([ "$n" = a ] && echo 1 || echo 2)/24"
    RL_CLIENT_SERVER=$url rl_client_conf "$n" "tls_ca = \"$certs/ca.pem\"" >/dev/null
    rl_start_client "$n" "$n"
done
check "client a connected over wss" rl_wait_until 20 rl_ready a
check "client b connected over wss" rl_wait_until 20 rl_ready b
va=$(rl_vip a); vb=$(rl_vip b)
echo "  a = ${va:-?}, b = ${vb:-?}"
check "status reports the wss:// server" test "$(rl_status_get a 'd["server"]' | cut -c1-6)" = "wss://"
check "first ping a -> b within 15 s" rl_wait_until 15 rl_ping_once a "${vb:-none}"
check "ping a -> b (5 of 5)" rl_ping a "${vb:-none}" 5
check "ping b -> a (5 of 5)" rl_ping b "${va:-none}" 5

# Plain TCP to the port must not speak WebSocket in the clear.
plain=$(timeout --foreground 5 ip netns exec "$(rl_ns a)" python3 -c '
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
try:
    print(s.recv(64)[:12])
except Exception as e:
    print("closed", e)
' "$RL_SERVER_IP" "$RL_SERVER_PORT" 2>&1)
check "the port does not answer a cleartext upgrade with 101 ($plain)" test "${plain#*101}" = "$plain"

rl_attach c 10.91.0.13/24
RL_CLIENT_SERVER=$url rl_client_conf c >/dev/null
rl_start_client c c
check_not "client c without tls_ca never connects (watched 8 s)" rl_wait_until 8 rl_connected c
echo "  c's last_error: $(rl_status_get c 'd["last_error"]' | cut -c1-160)"
check "a still pings b" rl_ping a "${vb:-none}" 3
rl_finish test_wss
