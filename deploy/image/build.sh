#!/usr/bin/env bash
# `make image`: build Herald's image from the Dockerfile with buildah (no daemon), check it,
# and save it as an OCI archive in var/image/herald.tar.
#
#   make image                  FROM python:3.11-slim, pulled from the configured registries
#   make image IMAGE_STANDIN=1  FROM a stand-in base built here from Debian's packages, for a
#                               machine that reaches no container registry (see below)
#
# The stand-in is Debian bookworm (minbase) with Debian's python3 (3.11) and python3-venv,
# made with mmdebstrap and imported with `buildah from scratch` + `add`. It is not
# python:3.11-slim: its interpreter is /usr/bin/python3 (3.11.2) instead of /usr/local/bin's
# upstream build, and the image carries Debian's patch level. The Dockerfile itself is the
# same, both stages on the same base, so the build, the venv, the baked files, the user and the
# metadata are checked for real; the base is the one thing that differs.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${HERALD_CACHE_DIR:-$HOME/.cache/herald}/image
TAG=${IMAGE_TAG:-localhost/herald:dev}
OUT=var/image
# vfs and chroot: no overlay module, no user namespaces and no runtime needed.
buildah=(buildah --storage-driver vfs)
build_args=()

if [ "${IMAGE_STANDIN:-}" = 1 ]; then
  base=localhost/herald-standin-python:3.11-bookworm
  if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
    mkdir -p "$CACHE"
    if [ ! -f "$CACHE/standin-rootfs.tar" ]; then
      echo "image: building the stand-in base's root filesystem from Debian's packages"
      mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$CACHE/standin-rootfs.tar.partial"
      mv "$CACHE/standin-rootfs.tar.partial" "$CACHE/standin-rootfs.tar"
    fi
    ctr=$("${buildah[@]}" from scratch)
    "${buildah[@]}" add --quiet "$ctr" "$CACHE/standin-rootfs.tar" /
    "${buildah[@]}" config --env LANG=C.UTF-8 --cmd python3 \
      --label org.opencontainers.image.description="stand-in for python:3.11-slim: Debian bookworm minbase + python3, python3-venv" \
      "$ctr"
    "${buildah[@]}" commit --quiet "$ctr" "$base" >/dev/null
    "${buildah[@]}" rm "$ctr" >/dev/null
  fi
  build_args+=(--build-arg "PYTHON_IMAGE=$base")
  echo "image: FROM $base (stand-in for python:3.11-slim)"
fi

# A TLS-inspecting proxy's CA, as the host's pip is told of it: mounted for the RUN steps only.
if [ -n "${PIP_CERT:-}" ]; then
  build_args+=(--volume "$PIP_CERT:$PIP_CERT:ro" --build-arg "PIP_CERT=$PIP_CERT")
fi

previous=$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$TAG" 2>/dev/null || true)

# --format docker keeps HEALTHCHECK, which the OCI image config has no field for.
"${buildah[@]}" bud --quiet --isolation chroot --format docker "${build_args[@]}" -t "$TAG" .

# The image the tag named before, now untagged, would only take space.
if [ -n "$previous" ] && [ "$previous" != "$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$TAG")" ]; then
  "${buildah[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi

# The built image, run: as its own user, with the settings and files the Dockerfile bakes in.
ctr=$("${buildah[@]}" from --quiet "$TAG")
trap '"${buildah[@]}" rm "$ctr" >/dev/null' EXIT
run=("${buildah[@]}" run --isolation chroot "$ctr" --)
uid=$("${run[@]}" id -u)
[ "$uid" = 10001 ] || { echo "image: runs as uid $uid, not 10001" >&2; exit 1; }
"${buildah[@]}" run --isolation chroot --env HERALD_LINKS__UNSUBSCRIBE_SECRET=build-check-only \
  --env HERALD_POLICY__ADDRESS_KEY=build-check-only-not-a-real-address-key "$ctr" -- herald check
health=$("${buildah[@]}" inspect --format '{{.Docker.Config.Healthcheck.Test}}' --type image "$TAG")
case $health in *healthz*) ;; *) echo "image: no HEALTHCHECK on /healthz: $health" >&2; exit 1 ;; esac

mkdir -p "$OUT"
rm -f "$OUT/herald.tar"
"${buildah[@]}" push --quiet "$TAG" "oci-archive:$OUT/herald.tar:${TAG##*/}"
echo "image: $TAG built and checked (uid $uid, herald check OK, HEALTHCHECK $health)"
echo "image: saved to $OUT/herald.tar ($(du -h "$OUT/herald.tar" | cut -f1)); load it with" \
  "\`podman load -i $OUT/herald.tar\` or \`skopeo copy oci-archive:$OUT/herald.tar docker-daemon:$TAG\`"
