#!/usr/bin/env bash
# Server load (issue 16 Targets), all on loopback: a three-node nats-server
# cluster with JetStream and three `ringlink server` instances on it, then
# `examples/server_load.rs` with LOAD_MEMBERS simulated members spread over
# the three (each logging in, sending relayed FORWARD frames and
# keepalives), and relay throughput across two instances next to within
# one, in the same run. Then the same members on one instance without
# [cluster] (the default single process). Prints the tool's report for
# each; nothing is recorded by itself (perf/RESULTS.md is written by hand
# from the output).
#
# Variables: LOAD_MEMBERS (10000), LOAD_SECONDS (30, traffic per run),
# LOAD_RATE (1, frames per member per second), LOAD_THROUGHPUT (5, seconds
# per pair; 0 = none), LOAD_ONLY (cluster|single|both, both), LOAD_DYNAMIC
# (1: members ask for an address from the pool first, as a client without
# `address` does; default 0, each claims its own static one), RINGLINK
# (the binary; default target/release/ringlink), LOAD_TOOL (the example's
# binary; default target/release/examples/server_load).
# Needs nats-server (apt-get install nats-server); builds nothing: run
#   cargo build --release --bin ringlink --example server_load
# first. Every process it starts is ended by its PID on exit.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
tdir=${CARGO_TARGET_DIR:-$root/target}
case $tdir in /*) ;; *) tdir=$root/$tdir ;; esac
RINGLINK=${RINGLINK:-$tdir/release/ringlink}
LOAD_TOOL=${LOAD_TOOL:-$tdir/release/examples/server_load}
MEMBERS=${LOAD_MEMBERS:-10000}
SECONDS_=${LOAD_SECONDS:-30}
RATE=${LOAD_RATE:-1}
TPUT=${LOAD_THROUGHPUT:-5}
ONLY=${LOAD_ONLY:-both}
DYNAMIC=()
[ "${LOAD_DYNAMIC:-0}" = 1 ] && DYNAMIC=(--dynamic)
PW=load-secret
POOL=10.80.0.0/18

for b in "$RINGLINK" "$LOAD_TOOL"; do
    [ -x "$b" ] || { echo "server_load: no $b (cargo build --release --bin ringlink --example server_load)" >&2; exit 1; }
done
command -v nats-server >/dev/null || { echo "server_load: needs nats-server" >&2; exit 1; }
# 10,000 sockets in the tool, up to as many in one instance, a few per
# NATS connection: every process started here inherits this.
ulimit -n "$(ulimit -Hn)" || true
echo "server_load: open files limit $(ulimit -n)"

tmp=$(mktemp -d /tmp/rl-server-load.XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    pids=()
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))))' "$1"; }
wait_port() {
    local port=$1 what=$2
    for _ in $(seq 300); do listening "$port" && return 0; sleep 0.1; done
    echo "server_load: $what did not listen on $port" >&2
    exit 1
}

# server_conf FILE PORT [cluster lines...]
server_conf() {
    local file=$1 port=$2; shift 2
    {
        printf 'listen = "127.0.0.1:%s"\npassword = "%s"\npool = "%s"\nstun = ""\nmetrics = ""\n' "$port" "$PW" "$POOL"
        printf 'control_socket = "%s"\nmax_clients = 20000\nmax_unauthenticated_per_ip = 1024\nlog = "warn"\n' "$file.sock"
        printf '%s\n' "$@"
    } >"$file"
}

run_tool() {
    local label=$1; shift
    echo
    echo "=== $label: $MEMBERS members, $SECONDS_ s of traffic, $RATE frame(s)/s each"
    echo "command: $LOAD_TOOL $* ${DYNAMIC[*]} --password $PW --pool $POOL --members $MEMBERS --duration $SECONDS_ --rate $RATE --throughput $TPUT"
    "$LOAD_TOOL" "$@" "${DYNAMIC[@]}" --password "$PW" --pool "$POOL" --members "$MEMBERS" \
        --duration "$SECONDS_" --rate "$RATE" --throughput "$TPUT"
}

cluster_run() {
    local n nports=() cports=() sports=() routes="" args=()
    for n in 1 2 3; do nports+=("$(free_port)"); cports+=("$(free_port)"); sports+=("$(free_port)"); done
    for n in 0 1 2; do routes+="${routes:+,}nats://127.0.0.1:${cports[$n]}"; done
    for n in 0 1 2; do
        mkdir -p "$tmp/js$n"
        nats-server -n "n$n" -a 127.0.0.1 -p "${nports[$n]}" -js -sd "$tmp/js$n" \
            --cluster_name ringlink-load --cluster "nats://127.0.0.1:${cports[$n]}" --routes "$routes" \
            >"$tmp/nats$n.log" 2>&1 &
        pids+=($!)
    done
    for n in 0 1 2; do wait_port "${nports[$n]}" "NATS node $n"; done
    for n in 0 1 2; do
        local own="\"nats://127.0.0.1:${nports[$n]}\"" others=() m
        for m in 0 1 2; do [ "$m" = "$n" ] || others+=("\"nats://127.0.0.1:${nports[$m]}\""); done
        server_conf "$tmp/s$n.toml" "${sports[$n]}" '[cluster]' \
            "nats = [$own, ${others[0]}, ${others[1]}]" "name = \"s$n\"" 'replicas = 3'
        "$RINGLINK" server --config "$tmp/s$n.toml" >"$tmp/s$n.log" 2>&1 &
        pids+=($!)
        args+=(--server "ws://127.0.0.1:${sports[$n]}/" --pid "$!")
    done
    for n in 0 1 2; do wait_port "${sports[$n]}" "instance s$n"; done
    run_tool "three instances on a three-node NATS cluster" "${args[@]}"
    echo "instance logs (warnings and errors):"
    for n in 0 1 2; do grep -h -E "WARN|ERROR" "$tmp/s$n.log" | sort | uniq -c | sort -rn | head -5 || true; done
    cleanup
    tmp=$(mktemp -d /tmp/rl-server-load.XXXXXX)
}

single_run() {
    local port
    port=$(free_port)
    server_conf "$tmp/single.toml" "$port"
    "$RINGLINK" server --config "$tmp/single.toml" >"$tmp/single.log" 2>&1 &
    pids+=($!)
    wait_port "$port" "the single instance"
    run_tool "one instance, no [cluster]" --server "ws://127.0.0.1:$port/" --pid "$!"
    echo "instance log (warnings and errors):"
    grep -h -E "WARN|ERROR" "$tmp/single.log" | sort | uniq -c | sort -rn | head -5 || true
}

echo "server_load: $(date -u +%FT%TZ), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $("$RINGLINK" --version 2>/dev/null), $(nats-server --version)"
case $ONLY in
    cluster) cluster_run ;;
    single) single_run ;;
    both) cluster_run; single_run ;;
    *) echo "LOAD_ONLY is cluster, single or both" >&2; exit 2 ;;
esac
