#!/usr/bin/env bash
# lbsync test lab: a local Docker engine plus three small local images.
#
# Usage (as root, Debian 12):
#   bash lab/lab.sh up       install packages if missing, write /etc/docker/daemon.json,
#                            start dockerd unless one answers on /var/run/docker.sock,
#                            then build the images. A second `up` only re-checks images.
#   bash lab/lab.sh images   (re)build the images; an unchanged image is kept as it is
#   bash lab/lab.sh smoke    start one container of each image, check it, remove it
#   bash lab/lab.sh python-base  (`up` runs it too) install debootstrap and docker-compose
#                            if missing, then build lbsync-lab/python-base unless an image
#                            of the same recipe exists (first build about 1-2 min)
#   bash lab/lab.sh status   does the engine answer, which lab images exist
#   bash lab/lab.sh down     stop the dockerd that `up` started (never any other one)
#
# Images (built with `docker import`, never pulled; all labelled lbsync-lab=1):
#   lbsync-lab/backend:latest  static busybox. PID 1 is `/bin/sh /entrypoint.sh`.
#       Env PORT (required; listens on 127.0.0.1:$PORT), NAME (default: hostname),
#       PATHS ("/api /api/v2": more paths answering 200), STOP_GRACE (seconds to keep
#       serving after SIGTERM, default 0). GET / and each path in PATHS answer
#       "backend=$NAME path=<path>"; /cgi-bin/echo answers any method with
#       "backend=$NAME method=<method> uri=<uri>"; /cgi-bin/sleep?SECONDS answers late;
#       other paths 404 "backend=$NAME path=<path> status=404". `touch /tmp/unhealthy`
#       in the container makes every non-cgi path answer 503 (fails the health check).
#       Health check: --health-cmd "wget -q -O /dev/null http://127.0.0.1:$PORT/"
#   lbsync-lab/nginx:latest    Debian's nginx; listens on nothing by itself. Mount a
#       directory of server blocks on /etc/nginx/conf.d. `nginx -t` and
#       `nginx -s reload` work inside; pid file /run/nginx.pid.
#   lbsync-lab/haproxy:latest  Debian's haproxy in master-worker mode:
#       haproxy -W -db -f /usr/local/etc/haproxy/haproxy.cfg -S /run/haproxy-master/master.sock
#       Mount a directory holding haproxy.cfg on /usr/local/etc/haproxy; mount a
#       directory on /run/haproxy-master (or /run/haproxy) to reach the sockets.
#   lbsync-lab/python-base:latest  Debian bookworm (debootstrap --variant=minbase from the
#       mirror apt uses) with python3 (3.11), python3-venv, python3-pip, ca-certificates;
#       the BASE_IMAGE of lbsync's Dockerfile in CI (deploy/build-image.sh). Labels
#       lbsync-lab.hash (the recipe's hash) and lbsync-lab.python (3.11).
#
# Every container of the lab runs with --network host and listens on a 127.0.0.1 port.
# Files: dockerd pid file /var/run/lbsync-lab/dockerd.pid, its log
# /var/log/lbsync-lab-dockerd.log. Env: LBSYNC_LAB_DOCKER overrides the docker CLI
# (default /usr/bin/docker when present, else `docker` from PATH).
set -euo pipefail
umask 022

LAB_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
IMAGES_DIR=$LAB_DIR/images
STATE_DIR=/var/run/lbsync-lab
PIDFILE=$STATE_DIR/dockerd.pid
LOCKFILE=$STATE_DIR/images.lock
DOCKERD_LOG=/var/log/lbsync-lab-dockerd.log
SOCK=/var/run/docker.sock
DAEMON_JSON=/etc/docker/daemon.json
DAEMON_JSON_CONTENT='{"bridge":"none","iptables":false,"ip-masq":false,"ip6tables":false}'
PACKAGES=(docker.io cgroupfs-mount busybox-static nginx haproxy podman)
BUSYBOX=/bin/busybox
# An engine restarted over many dead containers (say, a wedged 1,000-container bench)
# cleans them up for over a minute before it answers.
ENGINE_WAIT=120

BACKEND_IMAGE=lbsync-lab/backend:latest
NGINX_IMAGE=lbsync-lab/nginx:latest
HAPROXY_IMAGE=lbsync-lab/haproxy:latest
IMAGE_PATH_ENV='PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
# Bump when the way images are assembled changes without their files changing.
RECIPE=1

if [[ -n ${LBSYNC_LAB_DOCKER:-} ]]; then
    DOCKER=$LBSYNC_LAB_DOCKER
elif [[ -x /usr/bin/docker ]]; then
    DOCKER=/usr/bin/docker
else
    DOCKER=docker
fi

log() { printf 'lab: %s\n' "$*" >&2; }
die() {
    printf 'lab: error: %s\n' "$*" >&2
    exit 1
}

# The docker CLI, always aimed at the lab's socket whatever DOCKER_HOST says.
dk() { "$DOCKER" --host "unix://$SOCK" "$@"; }

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root (needs apt-get, dockerd and $SOCK)"
}

# ---------------------------------------------------------------- packages

package_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == 'install ok installed' ]]
}

ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        package_installed "$p" || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    log "installing missing packages: ${missing[*]}"
    # Keep postinst scripts from starting nginx/haproxy/docker services on the host:
    # the lab starts what it needs itself, and a host nginx would take port 80.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        own_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
    if [[ $rc -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "${PACKAGES[@]}" || rc=$?
    fi
    if [[ $own_policy -eq 1 ]]; then
        rm -f "$policy"
    fi
    [[ $rc -eq 0 ]] || die "apt-get failed (status $rc) installing: ${missing[*]}"
}

# ---------------------------------------------------------------- engine

ensure_daemon_json() {
    mkdir -p "$(dirname "$DAEMON_JSON")"
    if [[ -f $DAEMON_JSON && $(<"$DAEMON_JSON") == "$DAEMON_JSON_CONTENT" ]]; then
        return 0
    fi
    log "writing $DAEMON_JSON"
    printf '%s' "$DAEMON_JSON_CONTENT" >"$DAEMON_JSON.lab-tmp"
    mv -f "$DAEMON_JSON.lab-tmp" "$DAEMON_JSON"
    if engine_answers; then
        log "warning: a running engine reads $DAEMON_JSON only at start;" \
            "restart it (lab.sh down; lab.sh up) for the change to apply"
    fi
}

engine_answers() {
    [[ -S $SOCK ]] || return 1
    if command -v curl >/dev/null 2>&1; then
        [[ $(curl -s --max-time 2 --unix-socket "$SOCK" http://localhost/_ping 2>/dev/null ||
            true) == OK ]]
    else
        timeout 5 "$DOCKER" --host "unix://$SOCK" version >/dev/null 2>&1
    fi
}

# Pids of every running dockerd on the host.
dockerd_pids() {
    local f comm pid
    for f in /proc/[0-9]*/comm; do
        comm=$(cat "$f" 2>/dev/null) || continue
        if [[ $comm == dockerd ]]; then
            pid=${f#/proc/}
            printf '%s\n' "${pid%/comm}"
        fi
    done
}

# Prints the pid of the dockerd this script started, if it still runs.
lab_dockerd_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    process_running "$pid" dockerd || return 1
    printf '%s\n' "$pid"
}

# process_running PID COMM: PID runs (not a zombie) under the name COMM.
process_running() {
    local stat
    [[ $(cat "/proc/$1/comm" 2>/dev/null || true) == "$2" ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

cgroups_mounted() {
    awk '$2 ~ "^/sys/fs/cgroup" && ($3 == "cgroup" || $3 == "cgroup2") { found = 1 }
         END { exit !found }' /proc/mounts
}

dockerd_log_tail() {
    if [[ -f $DOCKERD_LOG ]]; then
        printf 'lab: last lines of %s:\n' "$DOCKERD_LOG" >&2
        tail -n 25 "$DOCKERD_LOG" | sed 's/^/    /' >&2
    fi
}

# wait_engine SECONDS [PID]: wait for the engine to answer; with PID, stop early
# when that process is gone.
wait_engine() {
    local limit=$1 pid=${2:-} deadline
    deadline=$((SECONDS + limit))
    while ! engine_answers; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            dockerd_log_tail
            die "dockerd (pid $pid) exited before answering on $SOCK"
        fi
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
}

ensure_engine() {
    if engine_answers; then
        return 0
    fi
    mkdir -p "$STATE_DIR"
    local pid others
    if pid=$(lab_dockerd_pid); then
        log "dockerd $pid (started by the lab) does not answer yet; waiting up to ${ENGINE_WAIT}s"
        if ! wait_engine "$ENGINE_WAIT" "$pid"; then
            dockerd_log_tail
            die "dockerd $pid does not answer on $SOCK after ${ENGINE_WAIT}s"
        fi
        return 0
    fi
    others=$(dockerd_pids | tr '\n' ' ')
    if [[ -n ${others// /} ]]; then
        log "a dockerd not started by the lab runs (pid ${others% }); waiting up to ${ENGINE_WAIT}s"
        if ! wait_engine "$ENGINE_WAIT"; then
            die "dockerd pid ${others% } runs but does not answer on $SOCK;" \
                "the lab does not touch an engine it did not start"
        fi
        return 0
    fi
    if ! cgroups_mounted; then
        log "no cgroup controllers mounted under /sys/fs/cgroup: running cgroupfs-mount"
        cgroupfs-mount
    fi
    rm -f "$PIDFILE"
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid -w: if setsid has to fork, it waits, so $! lives exactly as long as dockerd.
    setsid -w dockerd --host "unix://$SOCK" --pidfile "$PIDFILE" \
        >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local launched=$!
    if ! wait_engine "$ENGINE_WAIT" "$launched"; then
        dockerd_log_tail
        die "dockerd (pid $launched) does not answer on $SOCK after ${ENGINE_WAIT}s;" \
            "it is left running; stop it with: lab.sh down"
    fi
    log "dockerd $(lab_dockerd_pid || echo "$launched") answers; engine $(engine_version)"
}

engine_version() {
    dk version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null ||
        echo unknown
}

cmd_down() {
    local pid deadline
    if ! pid=$(lab_dockerd_pid); then
        if [[ -f $PIDFILE ]]; then
            log "removing stale pid file $PIDFILE (its pid is not a running dockerd)"
            rm -f "$PIDFILE"
        fi
        log "no dockerd started by the lab is running; nothing to stop"
        return 0
    fi
    log "stopping dockerd $pid"
    kill -TERM "$pid"
    deadline=$((SECONDS + 60))
    while process_running "$pid" dockerd; do
        if ((SECONDS >= deadline)); then
            die "dockerd $pid still runs 60s after SIGTERM"
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE"
    log "dockerd $pid stopped"
}

# ---------------------------------------------------------------- images

# rootfs_base ROOT: directories, static busybox with all its applets, users.
rootfs_base() {
    local root=$1 applet
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,root,run,var/log,var/lib,proc,sys,dev}
    mkdir -p "$root/tmp" "$root/var/tmp"
    chmod 1777 "$root/tmp" "$root/var/tmp"
    ln -s ../run "$root/var/run"
    ln -s ../run/lock "$root/var/lock"
    mkdir -p "$root/run/lock"
    [[ -x $BUSYBOX ]] || die "$BUSYBOX missing (package busybox-static)"
    if ldd "$BUSYBOX" >/dev/null 2>&1; then
        die "$BUSYBOX is dynamically linked; install busybox-static"
    fi
    install -m 0755 "$BUSYBOX" "$root/bin/busybox"
    while IFS= read -r applet; do
        [[ -n $applet && $applet != busybox && ! -e $root/bin/$applet ]] || continue
        ln -s busybox "$root/bin/$applet"
    done < <("$BUSYBOX" --list)
    install -m 0644 "$IMAGES_DIR/common/passwd" "$root/etc/passwd"
    install -m 0644 "$IMAGES_DIR/common/group" "$root/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files\n' >"$root/etc/nsswitch.conf"
    chmod 0644 "$root/etc/nsswitch.conf"
}

# copy_binary ROOT PATH: PATH, every library ldd lists and the loader, mode 0755.
copy_binary() {
    local root=$1 bin=$2 lib libs
    [[ -x $bin ]] || die "$bin missing"
    libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ "^/" { print $3 } $1 ~ "^/" { print $1 }')
    [[ -n $libs ]] || die "ldd lists no libraries for $bin"
    install -D -m 0755 "$bin" "$root$bin"
    while IFS= read -r lib; do
        install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done <<<"$libs"
}

build_backend_root() {
    local root=$1
    rootfs_base "$root"
    install -m 0755 "$IMAGES_DIR/backend/entrypoint.sh" "$root/entrypoint.sh"
    install -m 0755 "$IMAGES_DIR/backend/handler.sh" "$root/handler.sh"
}

build_nginx_root() {
    local root=$1 d
    rootfs_base "$root"
    copy_binary "$root" /usr/sbin/nginx
    mkdir -p "$root/etc/nginx/conf.d" "$root/var/log/nginx" "$root/usr/share/nginx"
    # Temp paths Debian's nginx is compiled with (nginx -V: --http-*-temp-path).
    for d in body fastcgi proxy scgi uwsgi; do
        mkdir -p "$root/var/lib/nginx/$d"
    done
    install -m 0644 "$IMAGES_DIR/nginx/nginx.conf" "$root/etc/nginx/nginx.conf"
    if [[ -f /etc/nginx/mime.types ]]; then
        install -m 0644 /etc/nginx/mime.types "$root/etc/nginx/mime.types"
    fi
}

build_haproxy_root() {
    local root=$1
    rootfs_base "$root"
    copy_binary "$root" /usr/sbin/haproxy
    mkdir -p "$root/usr/local/etc/haproxy" "$root/run/haproxy" "$root/run/haproxy-master" \
        "$root/var/lib/haproxy"
    install -m 0644 "$IMAGES_DIR/haproxy/haproxy.cfg" "$root/usr/local/etc/haproxy/haproxy.cfg"
}

# build_image IMAGE KIND CHANGE...: assemble the root of KIND, import it as IMAGE
# unless an image with the same content hash exists already.
build_image() {
    local image=$1 kind=$2
    shift 2
    local changes=("$@") work root tarfile hash current old_id args=() c
    work=$(mktemp -d "$BUILD_TMP/$kind.XXXXXX")
    root=$work/root
    tarfile=$work/rootfs.tar
    mkdir -p "$root"
    "build_${kind}_root" "$root"
    # A reproducible tar: same files, same bytes, same hash.
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
        -C "$root" -cf "$tarfile" .
    hash=$({
        echo "recipe=$RECIPE"
        printf 'change=%s\n' "${changes[@]}"
        sha256sum <"$tarfile"
    } | sha256sum | cut -c1-64)
    current=$(dk image inspect --format '{{ index .Config.Labels "lbsync-lab.hash" }}' \
        "$image" 2>/dev/null || true)
    if [[ $current == "$hash" ]]; then
        log "$image is up to date (${hash:0:12})"
        return 0
    fi
    old_id=$(dk image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    for c in "${changes[@]}" 'LABEL lbsync-lab=1' "LABEL lbsync-lab.hash=$hash" \
        "ENV $IMAGE_PATH_ENV"; do
        args+=(--change "$c")
    done
    dk import "${args[@]}" "$tarfile" "$image" >/dev/null
    log "built $image (${hash:0:12})"
    if [[ -n $old_id ]]; then
        # The previous build of this image, now untagged; kept if a container uses it.
        dk image rm "$old_id" >/dev/null 2>&1 || true
    fi
}

cmd_images() {
    engine_answers || die "no engine answers on $SOCK; run: bash lab/lab.sh up"
    mkdir -p "$STATE_DIR"
    exec 9>"$LOCKFILE"
    flock -w 300 9 || die "another lab.sh holds $LOCKFILE"
    BUILD_TMP=$(mktemp -d /tmp/lbsync-lab-build.XXXXXX)
    trap 'rm -rf "$BUILD_TMP"' EXIT
    build_image "$BACKEND_IMAGE" backend \
        'CMD ["/bin/sh", "/entrypoint.sh"]'
    build_image "$NGINX_IMAGE" nginx \
        'CMD ["nginx"]'
    build_image "$HAPROXY_IMAGE" haproxy \
        'CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg", "-S", "/run/haproxy-master/master.sock"]'
    rm -rf "$BUILD_TMP"
    trap - EXIT
    exec 9>&-
}

cmd_up() {
    require_root
    ensure_packages
    ensure_daemon_json
    ensure_engine
    cmd_images
    cmd_python_base
}

cmd_status() {
    local pid image id
    if engine_answers; then
        echo "engine: answers on $SOCK, $(engine_version)"
    else
        echo "engine: no answer on $SOCK"
    fi
    if pid=$(lab_dockerd_pid); then
        echo "dockerd: pid $pid, started by the lab (log $DOCKERD_LOG)"
    elif [[ -n $(dockerd_pids) ]]; then
        echo "dockerd: pid $(dockerd_pids | tr '\n' ' ')not started by the lab"
    else
        echo "dockerd: not running"
    fi
    engine_answers || return 0
    for image in "$BACKEND_IMAGE" "$NGINX_IMAGE" "$HAPROXY_IMAGE"; do
        if id=$(dk image inspect --format \
            '{{.Id}} hash={{ index .Config.Labels "lbsync-lab.hash" }}' "$image" 2>/dev/null); then
            echo "image: $image ${id:7:12} ${id#* }"
        else
            echo "image: $image missing (run: bash lab/lab.sh images)"
        fi
    done
}

# ---------------------------------------------------------------- python base image

PYTHON_BASE_IMAGE=lbsync-lab/python-base:latest
PYTHON_BASE_SUITE=bookworm
PYTHON_BASE_PACKAGES=(python3 python3-venv python3-pip ca-certificates)
# Host tools: debootstrap builds the image; docker-compose (v1) runs deploy/compose*.yaml
# in tests/e2e/test_deploy.py.
PYTHON_BASE_HOST_PACKAGES=(debootstrap docker-compose)
PYTHON_BASE_FALLBACK_MIRROR=http://deb.debian.org/debian
# Bump when the image must be rebuilt although nothing below changed.
PYTHON_BASE_RECIPE=1

ensure_python_base_host_packages() {
    local missing=() p
    for p in "${PYTHON_BASE_HOST_PACKAGES[@]}"; do
        package_installed "$p" || missing+=("$p")
    done
    [[ ${#missing[@]} -gt 0 ]] || return 0
    log "installing missing packages: ${missing[*]}"
    # Package lists `up` has just fetched are used as they are; only a failure updates them.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${missing[@]}"; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "${missing[@]}" || die "apt-get failed installing: ${missing[*]}"
    fi
}

# The Debian mirror apt uses for the suite: deb822 .sources files first, then one-line
# sources.list entries, else deb.debian.org.
debian_mirror() {
    local suite=$PYTHON_BASE_SUITE uri='' f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri=$(awk -v suite="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    key = tolower(line); sub(/:.*/, "", key)
                    sub(/^[^:]*:[ \t]*/, "", line)
                    if (key == "types") types = line
                    else if (key == "uris") uris = line
                    else if (key == "suites") suites = line
                }
                if ((" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ") && uris != "") {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "$f")
        [[ -z $uri ]] || break
    done
    if [[ -z $uri ]]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk -v suite="$suite" '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit } }')
    fi
    printf '%s\n' "${uri:-$PYTHON_BASE_FALLBACK_MIRROR}"
}

# build_python_base_root ROOT MIRROR: a minbase bookworm with python3, made small.
build_python_base_root() {
    local root=$1 mirror=$2 include
    include=$(IFS=,; echo "${PYTHON_BASE_PACKAGES[*]}")
    debootstrap --variant=minbase --include="$include" "$PYTHON_BASE_SUITE" "$root" "$mirror" \
        >"$root.debootstrap.log" 2>&1 || {
        tail -n 25 "$root.debootstrap.log" | sed 's/^/    /' >&2
        die "debootstrap failed (log above)"
    }
    printf 'deb %s %s main\n' "$mirror" "$PYTHON_BASE_SUITE" >"$root/etc/apt/sources.list"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
        "$root"/var/lib/apt/lists/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
        "$root"/var/log/* "$root"/var/cache/debconf/*-old "$root"/tmp/* "$root"/root/.cache
}

# python_base_cleanup WORK: unmount what a failed debootstrap may have left mounted in the
# new root, then remove it (never crossing into another file system).
python_base_cleanup() {
    local mnt
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v w="$1/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$1"
}

cmd_python_base() {
    engine_answers || die "no engine answers on $SOCK; run: bash lab/lab.sh up"
    ensure_python_base_host_packages
    local mirror hash current old_id work started=$SECONDS python
    mirror=$(debian_mirror)
    hash=$({
        echo "recipe=$PYTHON_BASE_RECIPE suite=$PYTHON_BASE_SUITE mirror=$mirror"
        printf 'package=%s\n' "${PYTHON_BASE_PACKAGES[@]}"
        declare -f build_python_base_root
    } | sha256sum | cut -c1-64)
    mkdir -p "$STATE_DIR"
    exec 9>"$LOCKFILE"
    flock -w 600 9 || die "another lab.sh holds $LOCKFILE"
    current=$(dk image inspect --format '{{ index .Config.Labels "lbsync-lab.hash" }}' \
        "$PYTHON_BASE_IMAGE" 2>/dev/null || true)
    if [[ $current == "$hash" ]]; then
        log "$PYTHON_BASE_IMAGE is up to date (${hash:0:12})"
        exec 9>&-
        return 0
    fi
    log "building $PYTHON_BASE_IMAGE: debootstrap $PYTHON_BASE_SUITE from $mirror"
    work=$(mktemp -d /var/tmp/lbsync-lab-python-base.XXXXXX)
    # shellcheck disable=SC2064  # expand $work now
    trap "python_base_cleanup '$work'" EXIT
    build_python_base_root "$work/root" "$mirror"
    python=$(chroot "$work/root" python3 -c \
        'import sys; print("%d.%d" % sys.version_info[:2])') ||
        die "python3 does not run in the new root"
    old_id=$(dk image inspect --format '{{.Id}}' "$PYTHON_BASE_IMAGE" 2>/dev/null || true)
    tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -C "$work/root" -cf - . |
        dk import \
            --change 'LABEL lbsync-lab=1' \
            --change "LABEL lbsync-lab.hash=$hash" \
            --change "LABEL lbsync-lab.python=$python" \
            --change "ENV $IMAGE_PATH_ENV" \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["python3"]' \
            - "$PYTHON_BASE_IMAGE" >/dev/null
    python_base_cleanup "$work"
    trap - EXIT
    exec 9>&-
    if [[ -n $old_id ]]; then
        # The previous build, now untagged; kept if a container or an image uses it.
        dk image rm "$old_id" >/dev/null 2>&1 || true
    fi
    log "built $PYTHON_BASE_IMAGE (python $python, ${hash:0:12}) in $((SECONDS - started))s"
}

# ---------------------------------------------------------------- smoke

SMOKE_IDS=()
SMOKE_DIR=

smoke_cleanup() {
    local id
    for id in "${SMOKE_IDS[@]}"; do
        dk rm -f "$id" >/dev/null 2>&1 || true
    done
    if [[ -n $SMOKE_DIR ]]; then
        rm -rf "$SMOKE_DIR"
    fi
}

# A 127.0.0.1 port nothing listens on (checked in /proc/net/tcp{,6}).
smoke_port() {
    local port hex
    while :; do
        port=$((20000 + RANDOM % 30000))
        printf -v hex ':%04X ' "$port"
        if ! awk -v p="$hex" '$4 == "0A" && index($2 " ", p) { found = 1 } END { exit !found }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
}

# smoke_run DOCKER-RUN-ARGS...: start a container, set SMOKE_ID (not in a subshell, so
# that smoke_cleanup sees every id).
SMOKE_ID=
smoke_run() {
    SMOKE_ID=$(dk run -d --network host --label lbsync-test=1 "$@")
    SMOKE_IDS+=("$SMOKE_ID")
}

# smoke_get URL [HOST]: print the body; busybox wget (never -T: it crashes).
smoke_get() {
    if [[ -n ${2:-} ]]; then
        "$BUSYBOX" wget -q -O - --header "Host: $2" "$1"
    else
        "$BUSYBOX" wget -q -O - "$1"
    fi
}

# smoke_until SECONDS COMMAND...: retry COMMAND every 0.1 s until it succeeds.
smoke_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

smoke_healthy() {
    [[ $(dk inspect --format '{{.State.Health.Status}}' "$1") == healthy ]]
}

# The haproxy master logs "Loading success." once per (re)load.
smoke_reloaded() {
    [[ $(dk logs "$1" 2>&1 | grep -c 'Loading success') -ge 2 ]]
}

smoke_expect() {
    # smoke_expect WHAT WANT GOT
    if [[ $3 != *"$2"* ]]; then
        die "smoke: $1: wanted '$2', got '$3'"
    fi
    log "smoke: $1: ok ($(printf '%s' "$3" | head -n 1))"
}

cmd_smoke() {
    engine_answers || die "no engine answers on $SOCK; run: bash lab/lab.sh up"
    trap smoke_cleanup EXIT
    SMOKE_DIR=$(mktemp -d /tmp/lbsync-lab-smoke.XXXXXX)
    local bport nport hport backend nginx haproxy body health

    bport=$(smoke_port)
    smoke_run --name "lbsync-smoke-backend-$bport" -e PORT="$bport" \
        -e NAME=smoke-backend -e PATHS='/api /api/v2' \
        --health-cmd "wget -q -O /dev/null http://127.0.0.1:$bport/" --health-interval 1s \
        "$BACKEND_IMAGE"
    backend=$SMOKE_ID
    smoke_until 10 smoke_get "http://127.0.0.1:$bport/" || die "smoke: backend does not answer"
    smoke_expect "backend GET /" "backend=smoke-backend path=/" \
        "$(smoke_get "http://127.0.0.1:$bport/")"
    smoke_expect "backend GET /api" "backend=smoke-backend path=/api" \
        "$(smoke_get "http://127.0.0.1:$bport/api")"
    smoke_expect "backend GET /api/v2" "backend=smoke-backend path=/api/v2" \
        "$(smoke_get "http://127.0.0.1:$bport/api/v2")"
    smoke_expect "backend POST /cgi-bin/echo" "backend=smoke-backend method=POST uri=/cgi-bin/echo" \
        "$("$BUSYBOX" wget -q -O - --post-data 'a=1' "http://127.0.0.1:$bport/cgi-bin/echo")"
    smoke_until 10 smoke_healthy "$backend" || die "smoke: backend never became healthy"
    health=$(dk inspect --format '{{.State.Health.Status}}' "$backend")
    smoke_expect "backend health" healthy "$health"

    nport=$(smoke_port)
    mkdir -p "$SMOKE_DIR/nginx"
    cat >"$SMOKE_DIR/nginx/smoke.conf" <<EOF
upstream smoke_up { server 127.0.0.1:$bport; }
server {
    listen 127.0.0.1:$nport;
    server_name smoke.test;
    location / { proxy_pass http://smoke_up; }
}
EOF
    smoke_run --name "lbsync-smoke-nginx-$nport" \
        -v "$SMOKE_DIR/nginx:/etc/nginx/conf.d:ro" "$NGINX_IMAGE"
    nginx=$SMOKE_ID
    smoke_until 10 smoke_get "http://127.0.0.1:$nport/" smoke.test ||
        die "smoke: nginx does not answer: $(dk logs "$nginx" 2>&1 | tail -n 5)"
    smoke_expect "nginx -t" "test is successful" "$(dk exec "$nginx" nginx -t 2>&1)"
    smoke_expect "nginx proxies /api" "backend=smoke-backend path=/api" \
        "$(smoke_get "http://127.0.0.1:$nport/api" smoke.test)"
    dk exec "$nginx" nginx -s reload >/dev/null 2>&1
    smoke_until 10 smoke_get "http://127.0.0.1:$nport/" smoke.test ||
        die "smoke: nginx does not answer after reload"
    smoke_expect "nginx after reload" "backend=smoke-backend path=/" \
        "$(smoke_get "http://127.0.0.1:$nport/" smoke.test)"

    hport=$(smoke_port)
    mkdir -p "$SMOKE_DIR/haproxy" "$SMOKE_DIR/haproxy-master"
    cat >"$SMOKE_DIR/haproxy/haproxy.cfg" <<EOF
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smoke
    bind 127.0.0.1:$hport
    default_backend smoke_up
backend smoke_up
    server s1 127.0.0.1:$bport check inter 1s
EOF
    body=$(dk run --rm --network host --label lbsync-test=1 \
        -v "$SMOKE_DIR/haproxy:/usr/local/etc/haproxy:ro" "$HAPROXY_IMAGE" \
        haproxy -c -f /usr/local/etc/haproxy/haproxy.cfg 2>&1)
    smoke_expect "haproxy -c" "Configuration file is valid" "$body"
    smoke_run --name "lbsync-smoke-haproxy-$hport" \
        -v "$SMOKE_DIR/haproxy:/usr/local/etc/haproxy:ro" \
        -v "$SMOKE_DIR/haproxy-master:/run/haproxy-master" "$HAPROXY_IMAGE"
    haproxy=$SMOKE_ID
    smoke_until 10 smoke_get "http://127.0.0.1:$hport/" ||
        die "smoke: haproxy does not answer: $(dk logs "$haproxy" 2>&1 | tail -n 5)"
    smoke_expect "haproxy proxies /api/v2" "backend=smoke-backend path=/api/v2" \
        "$(smoke_get "http://127.0.0.1:$hport/api/v2")"
    [[ -S $SMOKE_DIR/haproxy-master/master.sock ]] || die "smoke: no haproxy master socket"
    log "smoke: haproxy master socket: ok"
    dk kill -s USR2 "$haproxy" >/dev/null
    smoke_until 10 smoke_reloaded "$haproxy" ||
        die "smoke: haproxy did not reload: $(dk logs "$haproxy" 2>&1 | tail -n 5)"
    log "smoke: haproxy reload (SIGUSR2 to the master): ok"

    local t0 t1
    t0=$(date +%s%N)
    dk stop -t 10 "$backend" >/dev/null
    t1=$(date +%s%N)
    smoke_expect "backend stop (exit code)" 0 \
        "$(dk inspect --format '{{.State.ExitCode}}' "$backend")"
    log "smoke: backend stopped in $(((t1 - t0) / 1000000)) ms"
    log "smoke: all checks passed"
}

# ---------------------------------------------------------------- main

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

main() {
    local cmd=${1:-}
    case $cmd in
        up) cmd_up ;;
        images)
            require_root
            cmd_images
            ;;
        smoke) cmd_smoke ;;
        python-base)
            require_root
            cmd_python_base
            ;;
        down)
            require_root
            cmd_down
            ;;
        status) cmd_status ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

# Run main unless sourced (sourcing gives the functions, e.g. for checking the script).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
