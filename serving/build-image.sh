#!/usr/bin/env bash
# Build optdse's serving image (serving/Dockerfile) as optdse/serving:latest.
#
# With a registry, the Dockerfile's default base (python:3.11-slim) is pulled. Without one
# (this project's CI), pass --local-base: the base is a minimal Debian made with debootstrap
# from Debian's package mirror and imported with `docker import`; the Dockerfile then installs
# python3 with apt and the pinned Python packages from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${OPTDSE_IMAGE:-optdse/serving:latest}
build_args=()
if [ "${1:-}" = "--local-base" ]; then
  base=optdse/debian:bookworm-minbase
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    if ! command -v debootstrap >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    rootfs=$(mktemp -d /tmp/optdse-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
    # This machine's extra CAs (a TLS-inspecting proxy's, say) for pip in the build: in the bundle
    # now, and where update-ca-certificates finds them again when apt installs ca-certificates.
    mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/usr/local/share/ca-certificates"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    cp -r /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
  fi
  build_args=(--build-arg "BASE=$base")
fi
DOCKER_BUILDKIT=0 docker build --quiet "${build_args[@]}" -f serving/Dockerfile -t "$tag" . >/dev/null
echo "built $tag"
