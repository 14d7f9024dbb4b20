#!/usr/bin/env bash
# TURN over plain TCP (`turn://host:3478?transport=tcp`): the sites, checks
# and coturn failure of test_turns_path.sh, with coturn taking clients on
# TCP 3478 only and no TLS anywhere.
TURN_TRANSPORT=tcp exec bash "$(dirname "${BASH_SOURCE[0]}")/test_turns_path.sh"
