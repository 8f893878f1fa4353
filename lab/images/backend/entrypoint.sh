#!/bin/sh
# lbsync lab backend: PID 1 of lbsync-lab/backend (busybox sh).
#
# Env:
#   PORT        required; listen on 127.0.0.1:$PORT (the lab runs --network host)
#   NAME        name put in every answer (default: hostname)
#   PATHS       space separated extra paths answering 200, e.g. "/api /api/v2"
#   STOP_GRACE  seconds to keep serving after SIGTERM/SIGINT (default 0), then exit 0
#   LOG_REQUESTS  1 (default) logs one line per request on stderr; 0 turns it off
#
# The HTTP side is /handler.sh, run once per connection by `nc -ll -e`. Busybox
# httpd is not used for it: it answers a directory URL without a trailing slash
# (GET /api) with a 302, and the lab needs GET /api itself to answer 200.
# Busybox nc takes its listen(2) backlog from the number of -l flags: 64 here.

if [ -z "${PORT:-}" ]; then
    echo "lbsync-lab backend: PORT is required" >&2
    exit 2
fi
case $PORT in
    *[!0-9]*) echo "lbsync-lab backend: PORT must be a number, got '$PORT'" >&2; exit 2 ;;
esac
NAME=${NAME:-$(hostname)}
STOP_GRACE=${STOP_GRACE:-0}
PATHS=${PATHS:-}
LOG_REQUESTS=${LOG_REQUESTS:-1}
export PORT NAME STOP_GRACE PATHS LOG_REQUESTS

backlog=-llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll
nc "$backlog" -p "$PORT" 127.0.0.1 -e /handler.sh &
srv=$!
echo "lbsync-lab backend $NAME: listening on 127.0.0.1:$PORT (pid $srv)" >&2

stop() {
    trap '' TERM INT
    echo "lbsync-lab backend $NAME: $1, serving ${STOP_GRACE}s more" >&2
    if [ "$STOP_GRACE" != 0 ]; then
        sleep "$STOP_GRACE"
    fi
    kill "$srv" 2>/dev/null
    wait "$srv" 2>/dev/null
    echo "lbsync-lab backend $NAME: stopped" >&2
    exit 0
}
trap 'stop SIGTERM' TERM
trap 'stop SIGINT' INT
# Reload-type signals change nothing (they only interrupt `wait`).
trap 'echo "lbsync-lab backend $NAME: SIGHUP ignored" >&2' HUP
trap 'echo "lbsync-lab backend $NAME: SIGUSR1 ignored" >&2' USR1
trap 'echo "lbsync-lab backend $NAME: SIGUSR2 ignored" >&2' USR2

while :; do
    wait "$srv"
    rc=$?
    if ! kill -0 "$srv" 2>/dev/null; then
        echo "lbsync-lab backend $NAME: listener exited (status $rc)" >&2
        exit 1
    fi
done
