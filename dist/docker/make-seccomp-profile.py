#!/usr/bin/env python3
"""Writes seccomp-io-uring.json, the container seccomp profile for ringlink.

Docker's and Podman's default profiles deny io_uring_setup/enter/register,
so ringlink's dataplane cannot start under them. This profile allows
systemd's `@system-service` group (which has io_uring and
sched_setaffinity) minus `@privileged`, plus bpf for the TUN flow-steering
program (as the client unit does), plus the few privileged calls that the
container runtime itself makes under the filter (see RUNTIME), and keeps a
container from making namespaces: unshare and setns are denied, clone is
allowed only without namespace flags, and clone3 answers ENOSYS so the C
library falls back to clone (whose flags a filter can read).

Usage: python3 dist/docker/make-seccomp-profile.py > dist/docker/seccomp-io-uring.json
(needs systemd-analyze; re-run it to pick up a newer systemd's groups).
"""
import json
import subprocess

IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
# Without no-new-privileges (Docker's and Podman's default), runc loads the
# filter before it sets the container's user and capabilities, so these
# calls run under it; without any one of them the container does not start
# ("unable to setup user: setgroups: operation not permitted", "unable to
# apply caps"). They are in @privileged; Docker's default profile allows
# them too.
RUNTIME = {"capset", "setgroups", "setuid"}
NAMESPACES = {"unshare", "setns", "clone", "clone3"}
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 \
    | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080
EPERM, ENOSYS = 1, 38


def expand(group, seen=None):
    """The system calls of a systemd group, nested groups included."""
    seen = set() if seen is None else seen
    out = subprocess.run(["systemd-analyze", "syscall-filter", group],
                         check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word.startswith("@"):
            if word not in seen:
                seen.add(word)
                names |= expand(word, seen)
        else:
            names.add(word)
    return names


def main():
    # bpf loads the TUN flow-steering program; the kernel still asks for
    # CAP_BPF, which the container gets only with --cap-add BPF.
    allowed = (expand("@system-service") - expand("@privileged")) | set(IO_URING) | {"bpf"} \
        | RUNTIME
    allowed -= NAMESPACES
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64",
             "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64",
             "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": [
            {"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS,
                       "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
             "errnoRet": ENOSYS},
        ],
    }
    print(json.dumps(profile, indent=2))


if __name__ == "__main__":
    main()
