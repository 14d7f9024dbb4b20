#!/usr/bin/env bash
# Relay-path measurement (issue 3), now part of perf/run: two ringlink
# clients talking only through the server's WebSocket relay; iperf3 -C cubic
# TCP (PERF_TIME, 10 s; the old RL_PERF_SECS still works), ping RTT idle and
# under that load, CPU per GB, the binary's version/build/sha256. Prints the
# table without recording it (PERF_RECORD=1 to record a section of its own).
# Usage: sudo bash perf/relay.sh      (same environment as perf/run)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PERF_ONLY=${PERF_ONLY:-ringlink-relay}
export PERF_RECORD=${PERF_RECORD:-0}
[ -n "${RL_PERF_SECS:-}" ] && export PERF_TIME=${PERF_TIME:-$RL_PERF_SECS}
exec "$here/run" "$@"
