#!/usr/bin/env bash
# Build the biofed container image with no image registry: a Debian bookworm root file
# system from Debian's own packages (mmdebstrap), imported into podman as the base image,
# then Containerfile on top of it; finally `biofed --version` and `biofed demo` run inside.
#
#   scripts/build_image.sh                 # as root; needs: apt-get install podman mmdebstrap
#   IMAGE=biofed:0.1.0 scripts/build_image.sh
#
# Idempotent: the base tarball and base image are reused when present (REBUILD_BASE=1 makes
# them again); the image build reuses podman's layer cache. Settings (environment):
#   SUITE, DEBIAN_MIRROR     Debian suite and mirror for mmdebstrap (bookworm, deb.debian.org)
#   WORK                     where the base tarball goes (/var/tmp/biofed-image)
#   BASE_TAG, IMAGE          the base image's and the image's names
#   PODMAN_OPTS              global podman options, e.g. "--storage-driver=vfs"
#   BUILD_OPTS               extra `podman build` options
#   RUN_OPTS                 extra `podman run` options
#   SKIP_DEMO=1              stop after `biofed --version`
#   FORCE_CHROOT=1           build with --isolation=chroot and run by chroot(8) (the fallback
#                            where podman cannot run containers; needs root)
# pip inside the build uses this machine's pip settings (PIP_* variables, else `pip config`):
# index URLs and wheel folders; local folders (file:// URLs, find-links paths) are mounted
# read-only into the build. Nothing of them reaches the runtime image (Containerfile).
set -euo pipefail

cd "$(dirname "$0")/.."
SUITE=${SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${WORK:-/var/tmp/biofed-image}
BASE_TAG=${BASE_TAG:-localhost/biofed-base:${SUITE}}
IMAGE=${IMAGE:-localhost/biofed:dev}
read -r -a podman_opts <<<"${PODMAN_OPTS:-}"
read -r -a build_opts <<<"${BUILD_OPTS:-}"
read -r -a run_opts <<<"${RUN_OPTS:-}"

step() { printf '\n==> %s\n' "$*"; }
podman_() { podman "${podman_opts[@]}" "$@"; }

for tool in mmdebstrap podman; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: $tool is missing: apt-get install -y podman mmdebstrap" >&2
        exit 2
    fi
done
step "tools: $(podman --version), mmdebstrap $(mmdebstrap --version | awk '{print $2}')"

# 1. The base root file system, from Debian's packages only.
base_tar="$WORK/debian-${SUITE}-python.tar"
mkdir -p "$WORK"
if [[ -s "$base_tar" && "${REBUILD_BASE:-0}" != 1 ]]; then
    step "base tarball: reusing $base_tar ($(du -h "$base_tar" | cut -f1))"
else
    step "base tarball: mmdebstrap $SUITE (python3, python3-venv, ca-certificates)"
    # variant apt: Essential packages and apt; no documentation, man pages or locales.
    mmdebstrap --variant=apt \
        --include=python3,python3-venv,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        "$SUITE" "$base_tar.tmp.tar" "$DEBIAN_MIRROR"
    mv "$base_tar.tmp.tar" "$base_tar"
    REBUILD_BASE=1
    du -h "$base_tar"
fi

# 2. The base image.
if podman_ image exists "$BASE_TAG" && [[ "${REBUILD_BASE:-0}" != 1 ]]; then
    step "base image: reusing $BASE_TAG"
else
    step "base image: podman import $base_tar $BASE_TAG"
    podman_ import \
        --change 'CMD ["/bin/bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL org.opencontainers.image.description=Debian ${SUITE} (mmdebstrap) with python3" \
        "$base_tar" "$BASE_TAG"
fi

# 3. Can podman run containers here? Sandboxes and CI runners differ: try plain `podman run`,
# then with rlimits no higher than this shell's (a process without CAP_SYS_RESOURCE cannot
# raise them to podman's defaults), then with runc (crun refuses a hybrid cgroup v1/v2 host).
# If none works, the image is built with --isolation=chroot and biofed runs by chroot(8) in
# the image's exported root file system instead.
limits=(--ulimit "nofile=16384:16384" --ulimit "nproc=16384:16384")
run_ok=0
try_run() {  # $@: option sets to try, each "global|run"
    local output
    if output=$(podman_ "${runtime_opts[@]}" run --rm "${container_opts[@]}" "$BASE_TAG" true 2>&1); then
        run_ok=1
    else
        echo "    podman ${runtime_opts[*]} run ${container_opts[*]}: ${output##*$'\n'}"
    fi
}
runtime_opts=() container_opts=()
step "probe: can podman run a container here?"
try_run
if [[ $run_ok == 0 ]]; then container_opts=("${limits[@]}"); try_run; fi
if [[ $run_ok == 0 ]] && command -v runc >/dev/null; then runtime_opts=(--runtime runc); try_run; fi
if [[ "${FORCE_CHROOT:-0}" == 1 ]]; then run_ok=0; echo "    FORCE_CHROOT=1"; fi
if [[ $run_ok == 1 ]]; then
    echo "    yes, with: podman ${runtime_opts[*]:-} run ${container_opts[*]:-}"
    build_isolation=(--isolation=oci "${container_opts[@]}")
else
    echo "    no: building with --isolation=chroot, running biofed by chroot(8)"
    runtime_opts=() container_opts=()
    build_isolation=(--isolation=chroot "${limits[@]}")
fi
podman_r() { podman_ "${runtime_opts[@]}" "$@"; }

# 4. pip settings for the build stage, and the local folders they name.
pip_setting() {  # $1: PIP_* variable, $2: pip config key
    local value=${!1:-}
    if [[ -z "$value" ]] && command -v pip3 >/dev/null; then
        value=$(pip3 config get "global.$2" 2>/dev/null || true)
    fi
    printf '%s' "$value"
}
build_args=(--build-arg "BASE_IMAGE=$BASE_TAG" --build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)")
mounts=()
declare -A mounted=()
for pair in PIP_INDEX_URL:index-url PIP_EXTRA_INDEX_URL:extra-index-url PIP_FIND_LINKS:find-links; do
    value=$(pip_setting "${pair%%:*}" "${pair#*:}")
    [[ -n "$value" ]] || continue
    build_args+=(--build-arg "${pair%%:*}=$value")
    for location in $value; do
        path=${location#file://}
        # a local index (…/simple) links its files by relative paths: mount its parent
        [[ "${pair%%:*}" == PIP_FIND_LINKS || "$path" != */simple ]] || path=${path%/simple}
        if [[ "$path" == /* && -e "$path" && -z "${mounted[$path]:-}" ]]; then
            mounted[$path]=1
            mounts+=(--volume "$path:$path:ro")
        fi
    done
done
cert=$(pip_setting PIP_CERT cert)
if [[ -n "$cert" && -f "$cert" ]]; then
    build_args+=(--build-arg "PIP_CERT=$cert")
    [[ -n "${mounted[$cert]:-}" ]] || mounts+=(--volume "$cert:$cert:ro")
fi
step "pip in the build: ${build_args[*]:2}"

# 5. The image.
step "image: podman build -f Containerfile -t $IMAGE"
podman_r build "${build_isolation[@]}" "${mounts[@]}" "${build_args[@]}" "${build_opts[@]}" \
    -f Containerfile -t "$IMAGE" .
podman_ image inspect "$IMAGE" --format 'image {{.Id}}: user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}, cmd {{.Config.Cmd}}, size {{.Size}} bytes'

# 6. Run it: --version, then the demo (a 6-site federation on the container's loopback;
# --network=none: it needs no network beyond that).
biofed_in_image() {
    if [[ $run_ok == 1 ]]; then
        podman_r run --rm --network=none "${container_opts[@]}" "${run_opts[@]}" "$IMAGE" "$@"
    else
        local root="$WORK/rootfs"
        if [[ ! -x "$root/opt/biofed/bin/biofed" || "$root" -ot "$WORK/.image-id" ]]; then
            rm -rf "$root" && mkdir -p "$root"
            local id
            id=$(podman_ create "$IMAGE")
            podman_ export "$id" | tar -x -C "$root"
            podman_ rm "$id" >/dev/null
        fi
        mount -t proc proc "$root/proc" 2>/dev/null || true
        mount --bind /dev "$root/dev" 2>/dev/null || true
        mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"
        # The image's user, environment and working directory, as `podman run` would set them.
        local rc=0 chroot_bin
        chroot_bin=$(command -v chroot)
        env -i PATH=/opt/biofed/bin:/usr/bin:/bin HOME=/home/biofed PYTHONUNBUFFERED=1 \
            MPLCONFIGDIR=/tmp/matplotlib TERM="${TERM:-dumb}" \
            "$chroot_bin" --userspec=10001:10001 "$root" \
            /bin/sh -c 'cd /home/biofed && exec biofed "$@"' biofed "$@" || rc=$?
        umount "$root/dev" "$root/proc" 2>/dev/null || true
        return $rc
    fi
}
podman_ image inspect "$IMAGE" --format '{{.Id}}' >"$WORK/.image-id.new"
cmp -s "$WORK/.image-id.new" "$WORK/.image-id" 2>/dev/null || mv "$WORK/.image-id.new" "$WORK/.image-id"
step "run: biofed --version (in $IMAGE)"
if ! biofed_in_image --version; then
    echo "    (biofed --version failed: a biofed older than issue 16 has none; image label" \
        "version $(podman_ image inspect "$IMAGE" --format '{{index .Labels "org.opencontainers.image.version"}}'))"
    biofed_in_image --help >/dev/null  # but the image must run biofed
fi
if [[ "${SKIP_DEMO:-0}" != 1 ]]; then
    step "run: biofed demo (in $IMAGE)"
    biofed_in_image demo
fi
step "done: $IMAGE"
