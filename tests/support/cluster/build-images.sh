#!/usr/bin/env bash
# Builds, without any container registry, the images the cluster tests run, as docker
# archives ready for `ctr -n k8s.io images import`:
#   pause     registry.k8s.io/pause:3.10 from tests/support/cluster/pause.c (gcc -static): the
#             sandbox image that the test nodes' containerd is configured with
#   base      localhost/pingmesh-python-base:bookworm, a debootstrap (minbase) root of Debian
#             bookworm with python3, python3-venv and ca-certificates (stays in buildah's store)
#   exporter  localhost/pingmesh-exporter:test, the project's own Dockerfile built with
#             `buildah bud` over the local base (BUILD_BASE and RUNTIME_BASE build arguments)
# Idempotent and cached by a hash of each image's inputs (the base by its package list, the
# pause image by its source, the exporter by Dockerfile, .dockerignore, pyproject.toml,
# README.md, exporter/ and the base image): a second run only checks the hashes.
#
# Pip inside the build reaches the package index with this machine's pip settings (index
# URLs, CA bundle) passed as a pip.conf and a CA file bind-mounted into the RUN steps only;
# neither is copied into a layer, and the build stage holding pip's cache is not kept.
#
# Prints the archives, then the path of an env file (on its last line) with
#   PINGMESH_PAUSE_IMAGE  PINGMESH_PAUSE_ARCHIVE  PINGMESH_BASE_IMAGE
#   PINGMESH_EXPORTER_IMAGE  PINGMESH_EXPORTER_ARCHIVE  PINGMESH_EXPORTER_INPUTS
#
#   PINGMESH_CACHE           cache root (default /var/cache/pingmesh-exporter); all state
#                            lives under $PINGMESH_CACHE/images
#   PINGMESH_DEBIAN_MIRROR   Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   PINGMESH_REBUILD=1       ignore the hashes and rebuild everything
# Needs root, gcc (static libc: libc6-dev), debootstrap, buildah and network access to the
# Debian mirror and the Python package index.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$SCRIPT_DIR/../../.." && pwd)
CACHE=${PINGMESH_CACHE:-/var/cache/pingmesh-exporter}
IMAGES=$CACHE/images
RUNROOT=/run/pingmesh-exporter-buildah/$(echo "$IMAGES" | sha256sum | cut -c1-12)  # one per store
MIRROR=${PINGMESH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
REBUILD=${PINGMESH_REBUILD:-0}

# ---- what is built, in one place -------------------------------------------------------
RECIPE=1  # bump when the way an image is made changes, to invalidate every cached image
SUITE=bookworm
BASE_PACKAGES=(python3 python3-venv ca-certificates)
PAUSE_IMAGE=registry.k8s.io/pause:3.10
BASE_IMAGE=localhost/pingmesh-python-base:$SUITE
EXPORTER_IMAGE=localhost/pingmesh-exporter:test
DEPS_IMAGE=localhost/pingmesh-exporter-deps:cache  # the Dockerfile's deps stage, a layer cache

step() { printf 'build-images: %s\n' "$*" >&2; }
took() { printf 'build-images: %s: built in %ss\n' "$1" "$((SECONDS - $2))" >&2; }
fail() { printf 'build-images: FAILED: %s\n' "$*" >&2; exit 1; }
run_quiet() {  # run_quiet LOG CMD...: output to LOG, whose tail is shown if CMD fails
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then tail -n 25 "$log" >&2; return 1; fi
}

[[ $(id -u) == 0 ]] || fail "needs root (debootstrap and buildah's overlay store)"
for tool in gcc debootstrap buildah sha256sum flock; do
  command -v "$tool" >/dev/null || fail "$tool not found (Debian: apt-get install gcc libc6-dev debootstrap buildah)"
done
mkdir -p "$IMAGES" "$RUNROOT"
exec 9>"$IMAGES/.lock"
flock -w 1800 9 || fail "another build-images.sh holds $IMAGES/.lock for 30 min"

# buildah with a store and a network configuration of its own under the cache, apart from
# the machine's (its defaults would create /etc/cni/net.d and /etc/containers/networks).
printf '[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "%s"\ncni_plugin_dirs = ["/usr/lib/cni"]\n' \
  "$IMAGES/network" >"$IMAGES/containers.conf"
export CONTAINERS_CONF=$IMAGES/containers.conf
bah() {
  buildah --root "$IMAGES/storage" --runroot "$RUNROOT" --storage-driver overlay \
    --short-name-alias-conf "$IMAGES/short-name-aliases.conf" "$@"
}
# buildah 1.28 has no option for the place of its blob-info cache: when this run creates
# /var/lib/containers for it, the cleanup removes it again.
[[ -e /var/lib/containers ]] && OWN_VLC=0 || OWN_VLC=1

WORK=$(mktemp -d "$IMAGES/.work.XXXXXX")
CONTAINERS=()
cleanup() {
  local c m
  for c in "${CONTAINERS[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
  # debootstrap mounts proc, sys, ... in its target; a failed run can leave them behind.
  for m in $(awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$WORK"
  if ((OWN_VLC)); then
    rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb
    rmdir /var/lib/containers/cache /var/lib/containers 2>/dev/null || true
  fi
}
trap cleanup EXIT

hash_text() { sha256sum | cut -c1-64; }
label_of() {  # label_of IMAGE: the image's inputs hash, empty if the image is missing
  bah inspect --type image --format '{{index .ImageAnnotations "io.pingmesh.inputs"}}' "$1" \
    2>/dev/null || true
}
archive() {  # archive IMAGE PATH: a docker archive of IMAGE, written atomically
  rm -f "$2.part"
  run_quiet "$WORK/push.log" bah push -q "$1" "docker-archive:$2.part:$1" \
    || fail "buildah push of $1 to $2"
  mv -f "$2.part" "$2"
}
drop_stale() {  # drop_stale GLOB KEEP: remove the older archives of one image
  local f
  for f in $1; do [[ -e $f && $f != "$2" ]] && rm -f "$f"; done
  return 0
}

# ---- (a) pause -------------------------------------------------------------------------
PAUSE_SRC=$SCRIPT_DIR/pause.c
[[ -f $PAUSE_SRC ]] || fail "missing $PAUSE_SRC"
pause_hash=$({ echo "recipe=$RECIPE image=$PAUSE_IMAGE"; gcc --version | head -n1; cat "$PAUSE_SRC"; } | hash_text)
PAUSE_ARCHIVE=$IMAGES/pause-${pause_hash:0:16}.tar
if [[ $REBUILD != 1 && -s $PAUSE_ARCHIVE ]]; then
  step "pause $PAUSE_IMAGE: cached"
else
  step "pause $PAUSE_IMAGE: building"; t=$SECONDS
  mkdir -p "$WORK/pause"
  gcc -static -Os -s -Wall -Wextra -Werror -o "$WORK/pause/pause" "$PAUSE_SRC" 2>"$WORK/gcc.log" \
    || { cat "$WORK/gcc.log" >&2; fail "gcc -static of pause.c (static libc: apt-get install libc6-dev)"; }
  c=$(bah from scratch) || fail "buildah from scratch"
  CONTAINERS+=("$c")
  bah copy --chmod 0755 "$c" "$WORK/pause/pause" /pause >/dev/null || fail "buildah copy of pause"
  bah config --entrypoint '["/pause"]' --cmd '' --user 65535:65535 \
    --annotation "io.pingmesh.inputs=$pause_hash" "$c" || fail "buildah config of pause"
  bah commit -q --rm "$c" "$PAUSE_IMAGE" >/dev/null || fail "buildah commit of $PAUSE_IMAGE"
  CONTAINERS=()
  archive "$PAUSE_IMAGE" "$PAUSE_ARCHIVE"
  took pause "$t"
fi
drop_stale "$IMAGES/pause-*.tar" "$PAUSE_ARCHIVE"

# ---- (b) Python base from debootstrap ----------------------------------------------------
base_hash=$(echo "recipe=$RECIPE suite=$SUITE variant=minbase mirror=$MIRROR packages=${BASE_PACKAGES[*]}" | hash_text)
if [[ $REBUILD != 1 && $(label_of "$BASE_IMAGE") == "$base_hash" ]]; then
  step "base $BASE_IMAGE: cached"
else
  step "base $BASE_IMAGE: debootstrap $SUITE (minbase + ${BASE_PACKAGES[*]}, about a minute)"
  t=$SECONDS
  rootfs=$WORK/rootfs
  mkdir -p "$IMAGES/debs"
  includes=$(IFS=,; echo "${BASE_PACKAGES[*]}")
  run_quiet "$WORK/debootstrap.log" debootstrap --variant=minbase --include="$includes" \
    --cache-dir="$IMAGES/debs" "$SUITE" "$rootfs" "$MIRROR" \
    || fail "debootstrap of $SUITE from $MIRROR (log above)"
  # What an image does not carry: package lists and downloads, logs, the machine's resolver
  # and host name (the runtime provides them), documentation.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/info/* "$rootfs"/tmp/* "$rootfs"/root/.cache
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  [[ -x $rootfs/usr/bin/python3 ]] || fail "debootstrap root has no /usr/bin/python3"
  c=$(bah from scratch) || fail "buildah from scratch"
  CONTAINERS+=("$c")
  mnt=$(bah mount "$c") || fail "buildah mount"
  tar -C "$rootfs" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf - \
    || fail "copying the debootstrap root into the image"
  bah umount "$c" >/dev/null
  bah config --cmd '["python3"]' --env LANG=C.UTF-8 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.description=Debian $SUITE minbase with ${BASE_PACKAGES[*]}" \
    --annotation "io.pingmesh.inputs=$base_hash" "$c" || fail "buildah config of the base"
  bah commit -q --rm "$c" "$BASE_IMAGE" >/dev/null || fail "buildah commit of $BASE_IMAGE"
  CONTAINERS=()
  rm -rf "$rootfs"
  took base "$t"
fi
base_id=$(bah inspect --type image --format '{{.FromImageID}}' "$BASE_IMAGE") \
  || fail "no $BASE_IMAGE in $IMAGES/storage"

# ---- (c) the exporter from the project's Dockerfile --------------------------------------
cd "$PROJECT"
inputs=(Dockerfile .dockerignore pyproject.toml README.md)
mapfile -t sources < <(find exporter -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' | LC_ALL=C sort)
for f in "${inputs[@]}"; do [[ -f $f ]] || fail "missing $PROJECT/$f"; done
exporter_hash=$({ echo "recipe=$RECIPE image=$EXPORTER_IMAGE base=$base_id"; \
  sha256sum "${inputs[@]}" "${sources[@]}"; } | hash_text)
EXPORTER_ARCHIVE=$IMAGES/pingmesh-exporter-${exporter_hash:0:16}.tar
if [[ $REBUILD != 1 && -s $EXPORTER_ARCHIVE && $(label_of "$EXPORTER_IMAGE") == "$exporter_hash" ]]; then
  step "exporter $EXPORTER_IMAGE: cached"
else
  step "exporter $EXPORTER_IMAGE: buildah bud of Dockerfile over $BASE_IMAGE"; t=$SECONDS
  # This machine's pip settings, for the RUN steps only.
  pipconf() {  # pipconf KEY: PIP_<KEY> from the environment, else pip's configuration
    local env=PIP_$(tr 'a-z-' 'A-Z_' <<<"$1")
    if [[ -n ${!env:-} ]]; then echo "${!env}"; return; fi
    python3 -m pip config get "global.$1" 2>/dev/null || true
  }
  ca=$(pipconf cert)
  [[ -n $ca ]] || ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
  {
    echo "[global]"
    echo "cache-dir = /run/pingmesh-build/pip-cache"
    echo "disable-pip-version-check = true"
    for key in index-url extra-index-url trusted-host timeout default-timeout proxy; do
      val=$(pipconf "$key")
      [[ -n $val ]] && echo "$key = $val"
    done
    [[ -f $ca ]] && echo "cert = /run/pingmesh-build/ca.crt"
  } >"$WORK/pip.conf"
  mkdir -p "$IMAGES/pip-cache"
  mounts=(-v "$WORK/pip.conf:/etc/pip.conf:ro" -v "$IMAGES/pip-cache:/run/pingmesh-build/pip-cache")
  [[ -f $ca ]] && mounts+=(-v "$ca:/run/pingmesh-build/ca.crt:ro")
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
  # Isolation chroot: runc cannot start containers on this machine without
  # CAP_SYS_RESOURCE; the RUN steps need no more than a chroot with the host's network.
  bud=(bah bud --isolation chroot --network host --pull=never --layers --identity-label=false
    --build-arg "BUILD_BASE=$BASE_IMAGE" --build-arg "RUNTIME_BASE=$BASE_IMAGE"
    --build-arg "VERSION=${version:-0.1.0}" "${mounts[@]}" -f Dockerfile)
  # The dependency stage, tagged so that its layers outlive the prune below: a change of the
  # sources alone then rebuilds from the exporter's own layer on.
  run_quiet "$WORK/deps.log" "${bud[@]}" --target deps -t "$DEPS_IMAGE" . \
    || fail "buildah bud of the deps stage of $PROJECT/Dockerfile (log above)"
  run_quiet "$WORK/bud.log" "${bud[@]}" --annotation "io.pingmesh.inputs=$exporter_hash" \
    -t "$EXPORTER_IMAGE" . \
    || fail "buildah bud of $PROJECT/Dockerfile (log above)"
  # The image must start as the DaemonSet runs it: user 65534, the entry point on PATH.
  c=$(bah from --pull=never "$EXPORTER_IMAGE") || fail "buildah from $EXPORTER_IMAGE"
  CONTAINERS+=("$c")
  run_quiet "$WORK/check.log" bah run --isolation chroot --user 65534:65534 "$c" -- \
    pingmesh-exporter --help \
    || fail "the built image's entry point does not run (pingmesh-exporter --help)"
  bah rm "$c" >/dev/null; CONTAINERS=()
  archive "$EXPORTER_IMAGE" "$EXPORTER_ARCHIVE"
  bah rmi --prune >/dev/null 2>&1 || true  # previous builds' images and layers, now untagged
  took exporter "$t"
fi
drop_stale "$IMAGES/pingmesh-exporter-*.tar" "$EXPORTER_ARCHIVE"

ENV_FILE=$IMAGES/images.env
cat >"$ENV_FILE.part" <<EOF
PINGMESH_PAUSE_IMAGE=$PAUSE_IMAGE
PINGMESH_PAUSE_ARCHIVE=$PAUSE_ARCHIVE
PINGMESH_BASE_IMAGE=$BASE_IMAGE
PINGMESH_EXPORTER_IMAGE=$EXPORTER_IMAGE
PINGMESH_EXPORTER_ARCHIVE=$EXPORTER_ARCHIVE
PINGMESH_EXPORTER_INPUTS=$exporter_hash
EOF
mv -f "$ENV_FILE.part" "$ENV_FILE"
echo "$PAUSE_ARCHIVE"
echo "$EXPORTER_ARCHIVE"
echo "$ENV_FILE"
