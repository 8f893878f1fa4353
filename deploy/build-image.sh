#!/usr/bin/env bash
# Build the lbsync image with no network inside the build.
#
# Usage: bash deploy/build-image.sh [--tag TAG] [--base IMAGE]
#   --tag TAG      the image to build (default lbsync:dev; env LBSYNC_IMAGE)
#   --base IMAGE   the Dockerfile's BASE_IMAGE, a local image with python3 and venv
#                  (default lbsync-lab/python-base:latest, which `bash lab/lab.sh
#                  python-base` builds; env LBSYNC_BASE_IMAGE). Never pulled.
#
# 1. Asks the base image which Python, machine and glibc it has.
# 2. Downloads the wheels that Python needs into deploy/wheelhouse/ (gitignored) on this
#    host: the runtime dependencies and the build backend from pyproject.toml, binary
#    wheels only. Skipped when deploy/wheelhouse/.key says they are there already.
# 3. `docker build` (the classic builder when buildx is missing: DOCKER_BUILDKIT=0), which
#    installs from deploy/wheelhouse/ only (--no-index). Unchanged sources = cached layers.
# 4. Removes the image the tag named before, if the build replaced it and nothing uses it,
#    and build-stage images older than the newest (those this script made before).
#
# Env: LBSYNC_LAB_DOCKER overrides the docker CLI (default /usr/bin/docker when present,
# else `docker`), PYTHON overrides the host Python that runs pip (default python3).
set -euo pipefail
umask 022

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
WHEELHOUSE=$ROOT/deploy/wheelhouse
TAG=${LBSYNC_IMAGE:-lbsync:dev}
BASE=${LBSYNC_BASE_IMAGE:-lbsync-lab/python-base:latest}
PYTHON=${PYTHON:-python3}
# Bump when the way the wheelhouse is made changes.
WHEELHOUSE_RECIPE=1

if [[ -n ${LBSYNC_LAB_DOCKER:-} ]]; then
    DOCKER=$LBSYNC_LAB_DOCKER
elif [[ -x /usr/bin/docker ]]; then
    DOCKER=/usr/bin/docker
else
    DOCKER=docker
fi

log() { printf 'build-image: %s\n' "$*" >&2; }
die() {
    printf 'build-image: error: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
        --base) BASE=${2:?--base needs a value}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

started=$(date +%s%N)
elapsed() { echo "$((($(date +%s%N) - started) / 1000000)) ms"; }

# One build at a time per checkout: they share deploy/wheelhouse/.
mkdir -p "$WHEELHOUSE"
exec 9>"$WHEELHOUSE/.lock"
flock -w 600 9 || die "another build-image.sh holds $WHEELHOUSE/.lock"

# ---- 1. the base image's Python
"$DOCKER" image inspect --format '{{.Id}}' "$BASE" >/dev/null 2>&1 ||
    die "base image $BASE is not on this engine (it is never pulled);" \
        "build it (bash lab/lab.sh python-base) or pull it yourself"
read -r py_version machine libc libc_version < <(
    "$DOCKER" run --rm --network host --label lbsync-build=1 --entrypoint python3 "$BASE" -c \
        'import platform, sys; print("%d.%d" % sys.version_info[:2], platform.machine(), *(platform.libc_ver() or ("none", "0")))'
) || die "cannot run python3 in $BASE"
[[ $libc == glibc ]] ||
    die "$BASE uses libc '$libc'; only glibc bases are supported offline" \
        "(build online instead: docker build --build-arg PIP_OFFLINE=0 ...)"
log "base $BASE: python $py_version, $machine, glibc $libc_version"

# ---- 2. the wheelhouse
mapfile -t requirements < <("$PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
for requirement in data["build-system"]["requires"] + data["project"]["dependencies"]:
    print(requirement)
EOF
)
[[ ${#requirements[@]} -gt 0 ]] || die "no requirements read from pyproject.toml"
key=$({
    echo "recipe=$WHEELHOUSE_RECIPE python=$py_version machine=$machine glibc=$libc_version"
    printf 'requirement=%s\n' "${requirements[@]}"
} | sha256sum | cut -c1-64)
if [[ -f $WHEELHOUSE/.key && $(<"$WHEELHOUSE/.key") == "$key" ]]; then
    log "wheelhouse is up to date (${key:0:12})"
else
    log "downloading wheels for python $py_version into deploy/wheelhouse/"
    rm -f "$WHEELHOUSE"/*.whl "$WHEELHOUSE/.key"
    abi=cp${py_version/./}
    platforms=()
    # pip does not widen an explicit manylinux_2_N to older glibc versions: list them.
    for ((minor = ${libc_version#2.}; minor >= 17; minor--)); do
        platforms+=(--platform "manylinux_2_${minor}_${machine}")
    done
    platforms+=(--platform "manylinux2014_${machine}")
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$WHEELHOUSE" \
        --only-binary=:all: --python-version "$py_version" --implementation cp \
        --abi "$abi" --abi abi3 --abi none "${platforms[@]}" "${requirements[@]}" ||
        die "pip download failed"
    echo "$key" >"$WHEELHOUSE/.key"
    log "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels ($(elapsed))"
fi

# ---- 3. the build
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/lbsync/__init__.py")
revision=unknown created='' source=''
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
    # Only files in the build context count (a stable label keeps the build cached).
    if [[ -n $(git -C "$ROOT" status --porcelain -- lbsync templates pyproject.toml README.md \
        Dockerfile 2>/dev/null) ]]; then
        revision=$revision-dirty
    fi
    created=$(git -C "$ROOT" log -1 --format=%cI 2>/dev/null || true)
    source=$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)
fi
build_args=(--build-arg "BASE_IMAGE=$BASE" --build-arg "VERSION=$version"
    --build-arg "REVISION=$revision" --build-arg "CREATED=$created"
    --build-arg "SOURCE=$source")
if [[ -z ${DOCKER_BUILDKIT:-} ]] && ! "$DOCKER" buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
if [[ ${DOCKER_BUILDKIT:-} == 0 ]]; then
    # The classic builder runs each RUN in a container: on the host network, like every
    # container here (none of them needs a network: pip runs with --no-index).
    build_args+=(--network host)
fi
old_id=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
build_log=$(mktemp /tmp/lbsync-build-image.XXXXXX.log)
log "building $TAG (DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-default})"
if ! "$DOCKER" build "${build_args[@]}" --label lbsync-build=1 -f "$ROOT/Dockerfile" -t "$TAG" \
    "$ROOT" >"$build_log" 2>&1; then
    tail -n 40 "$build_log" | sed 's/^/    /' >&2
    die "docker build failed (whole log: $build_log)"
fi
rm -f "$build_log"
new_id=$("$DOCKER" image inspect --format '{{.Id}}' "$TAG")

# ---- 4. the image the tag named before, and build stages older than the newest one (the
# newest is the cache of the next build)
if [[ -n $old_id && $old_id != "$new_id" ]]; then
    "$DOCKER" image rm "$old_id" >/dev/null 2>&1 || true
fi
"$DOCKER" images --filter dangling=true --filter label=lbsync-build-stage=1 \
    --format '{{.CreatedAt}}	{{.ID}}' | sort -r | tail -n +2 | cut -f2 |
    while read -r stale; do
        "$DOCKER" image rm "$stale" >/dev/null 2>&1 || true
    done
log "built $TAG ${new_id#sha256:} in $(elapsed)"
echo "$new_id"
