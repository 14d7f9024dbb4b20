#!/usr/bin/python3
"""Runs a command under a Docker-format seccomp profile, as a container
runtime would, so the tests can check ringlink against the shipped profile
(dist/docker/seccomp-io-uring.json) without Docker.

Understands what that profile uses: defaultAction ERRNO with
defaultErrnoRet, ALLOW and ERRNO rules, MASKED_EQ argument conditions.
--deny-io-uring drops the io_uring calls from the allow list, which is
what Docker's own default profile does.

Usage: seccomp_exec.py [--deny-io-uring] PROFILE -- COMMAND [ARGS...]
"""
import json
import os
import sys

import seccomp

IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
OPS = {"SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ, "SCMP_CMP_EQ": seccomp.EQ}


def action(rule, profile):
    kind = rule["action"]
    if kind == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if kind == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(rule.get("errnoRet", profile.get("defaultErrnoRet", 1)))
    raise SystemExit(f"seccomp_exec: unsupported action {kind}")


def main():
    args = sys.argv[1:]
    deny = args[:1] == ["--deny-io-uring"]
    if deny:
        args = args[1:]
    if len(args) < 3 or args[1] != "--":
        raise SystemExit(__doc__)
    with open(args[0]) as f:
        profile = json.load(f)
    filt = seccomp.SyscallFilter(
        defaction=seccomp.ERRNO(profile.get("defaultErrnoRet", 1)))
    for rule in profile["syscalls"]:
        conditions = [
            # Docker's MASKED_EQ: value is the mask, valueTwo the result.
            seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args", [])
        ]
        for name in rule["names"]:
            if deny and name in IO_URING:
                continue
            try:
                filt.add_rule(action(rule, profile), name, *conditions)
            except (RuntimeError, ValueError):
                # A name this architecture does not have, as runc skips.
                pass
    filt.load()
    os.execvp(args[2], args[2:])


if __name__ == "__main__":
    main()
