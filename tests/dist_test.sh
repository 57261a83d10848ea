#!/bin/sh
# What `meson install` adds for a Debian user: the manual pages render without a
# warning (man --warnings), and the systemd user unit passes systemd-analyze verify
# with nothing to say (its ExecStart pointed at the built broker). A missing tool
# skips its part; both missing: skipped (exit 77). $1: the build directory.
build=$1
ran=0
if command -v man >/dev/null; then
    for page in mpbroker-server.1 mpbroker-cli.1 libmpbroker.3; do
        [ -f "$build/docs/man/$page" ] || { echo "no $page (scdoc missing?)"; exit 1; }
        warn=$(MANWIDTH=80 man --warnings -l "$build/docs/man/$page" 2>&1 >/dev/null)
        [ -z "$warn" ] || { echo "$page: $warn"; exit 1; }
    done
    # Every long option --help lists is in the page (the page follows the program).
    for prog in mpbroker-server mpbroker-cli; do
        text=$(MANWIDTH=200 man -l "$build/docs/man/$prog.1" 2>/dev/null)
        for opt in $("$build/$prog" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
            echo "$text" | grep -q -- "$opt" || { echo "$prog.1 lacks $opt"; exit 1; }
        done
    done
    echo "manual pages render without warnings and list every option"
    ran=1
fi
if command -v systemd-analyze >/dev/null; then
    t=$(mktemp -d) || exit 1
    trap 'rm -rf "$t"' EXIT
    sed "s|^ExecStart=[^ ]*|ExecStart=$build/mpbroker-server|" "$build/mpbroker.service" \
        > "$t/mpbroker.service"
    out=$(systemd-analyze verify --man=no "$t/mpbroker.service" 2>&1) || { echo "$out"; exit 1; }
    [ -z "$out" ] || { echo "mpbroker.service: $out"; exit 1; }
    echo "mpbroker.service verifies"
    ran=1
fi
[ $ran = 1 ] || exit 77
