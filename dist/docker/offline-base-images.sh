#!/usr/bin/env bash
# Builds local stand-ins for the two base images the Dockerfile names,
# for a build host that reaches Debian's mirror but no container registry:
#   docker.io/library/debian:bookworm-slim  a debootstrapped bookworm (minbase)
#   docker.io/library/rust:1-bookworm        that, plus gcc, this host's
#                                            Rust toolchain and the local CAs
#                                            it trusts (a proxy's, for
#                                            crates.io)
# With them in podman's store, `podman build` resolves both FROM lines
# locally and never asks a registry.
#
# Usage (root): bash dist/docker/offline-base-images.sh [toolchain-dir]
#   toolchain-dir: a rustup toolchain (default: the one `rustc` runs from).
# Needs debootstrap and podman; MIRROR overrides the Debian mirror.
set -euo pipefail

mirror=${MIRROR:-http://deb.debian.org/debian}
toolchain=${1:-$(rustc --print sysroot)}
# Podman's defaults ask for more open files and processes than some hosts
# (containers, CI sandboxes) allow; these fit under common hard limits.
limits=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

die() { echo "offline-base-images: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap)"
command -v debootstrap >/dev/null || die "missing debootstrap (apt-get install debootstrap)"
command -v podman >/dev/null || die "missing podman (apt-get install podman)"
[ -x "$toolchain/bin/cargo" ] || die "no cargo in $toolchain/bin (pass a rustup toolchain directory)"

work=$(mktemp -d /var/tmp/ringlink-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "debootstrap bookworm (minbase) from $mirror"
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
tar -C "$work/rootfs" -c . | podman import - docker.io/library/debian:bookworm-slim

echo "rust:1-bookworm from $toolchain"
mkdir "$work/rust"
cp -a "$toolchain" "$work/rust/toolchain"
rm -rf "$work/rust/toolchain/share/doc"
# The build stage fetches crates: it must trust what this host trusts.
mkdir "$work/rust/local-ca"
cp /usr/local/share/ca-certificates/*.crt "$work/rust/local-ca/" 2>/dev/null || true
cat >"$work/rust/Containerfile" <<'EOF'
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY local-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY toolchain /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
podman build --network host "${limits[@]}" -t docker.io/library/rust:1-bookworm "$work/rust"

echo "done; now: podman build --network host ${limits[*]} -t ringlink ."
