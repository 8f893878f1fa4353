#!/bin/sh
# lbsync lab backend: answers one HTTP request on stdin/stdout (run by
# `nc -ll -e` for each connection; env from /entrypoint.sh).
#
#   GET /, and each path in $PATHS (with or without a trailing slash)
#       200 "backend=$NAME path=<that path>"
#   /cgi-bin/echo[/...], any method
#       200 "backend=$NAME method=$REQUEST_METHOD uri=$REQUEST_URI",
#       then lines host=<Host header> and x-forwarded-for=<header>
#   /cgi-bin/sleep?SECONDS, any method
#       sleeps, then 200 "backend=$NAME slept=SECONDS" (for in-flight tests)
#   any other path
#       404 "backend=$NAME path=<path> status=404"
#   While /tmp/unhealthy exists every path but /cgi-bin/* answers
#       503 "backend=$NAME unhealthy" (so the lab health check fails).
# HEAD gets the headers only. Request bodies (Content-Length) are read and
# dropped. Every answer closes the connection and carries X-Backend: $NAME.
#
# This runs under busybox ash, whose `read -t` (a timeout) POSIX sh lacks.
# shellcheck disable=SC3045

cr=$(printf '\r')
method=
uri=

log() {
    if [ "${LOG_REQUESTS:-1}" != 0 ]; then
        echo "backend=$NAME $method $uri -> $1" >&2
    fi
}

reply() {
    # reply STATUS BODY
    printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\nX-Backend: %s\r\n\r\n' \
        "$1" "${#2}" "$NAME"
    if [ "$method" != HEAD ]; then
        printf '%s' "$2"
    fi
    log "$1"
    exit 0
}

trim() {
    # trim VALUE: print VALUE without leading/trailing blanks
    t=$1
    t=${t#"${t%%[! 	]*}"}
    t=${t%"${t##*[! 	]}"}
    printf '%s' "$t"
}

IFS= read -r -t 30 line || exit 0
line=${line%"$cr"}
method=${line%% *}
rest=${line#* }
uri=${rest%% *}
case $uri in
    /*) ;;
    *) reply "400 Bad Request" "backend=$NAME bad request
" ;;
esac

len=0
host=
xff=
while IFS= read -r -t 30 h; do
    h=${h%"$cr"}
    [ -z "$h" ] && break
    case $h in
        [Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]:*) len=$(trim "${h#*:}") ;;
        [Hh][Oo][Ss][Tt]:*) host=$(trim "${h#*:}") ;;
        [Xx]-[Ff][Oo][Rr][Ww][Aa][Rr][Dd][Ee][Dd]-[Ff][Oo][Rr]:*) xff=$(trim "${h#*:}") ;;
    esac
done
case $len in
    '' | *[!0-9]*) len=0 ;;
esac
if [ "$len" -gt 0 ]; then
    head -c "$len" >/dev/null
fi

path=${uri%%\?*}
query=
case $uri in
    *\?*) query=${uri#*\?} ;;
esac

case $path in
    /cgi-bin/echo | /cgi-bin/echo/*)
        reply "200 OK" "backend=$NAME method=$method uri=$uri
host=$host
x-forwarded-for=$xff
" ;;
    /cgi-bin/sleep)
        case $query in
            '' | *[!0-9.]*) reply "400 Bad Request" "backend=$NAME sleep needs ?SECONDS
" ;;
        esac
        sleep "$query"
        reply "200 OK" "backend=$NAME slept=$query
" ;;
esac

if [ -e /tmp/unhealthy ]; then
    reply "503 Service Unavailable" "backend=$NAME unhealthy
"
fi

if [ "$path" = / ]; then
    reply "200 OK" "backend=$NAME path=/
"
fi
for p in $PATHS; do
    if [ "$path" = "$p" ] || [ "$path" = "${p%/}/" ]; then
        reply "200 OK" "backend=$NAME path=$p
"
    fi
done
reply "404 Not Found" "backend=$NAME path=$path status=404
"
