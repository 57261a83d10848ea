#!/bin/sh
# The README's C example, built and run as written after `meson install`: the library
# is found without ldconfig by hand (tools/ldconfig.sh). Run in a private mount
# namespace (unshare -m) over a tmpfs /usr/local and a copy of /etc, so the machine's
# own /usr/local and linker cache are untouched. Needs root and unshare: else skipped
# (exit 77). $1: the build directory, $2: the source directory.
build=$1 src=$2
unset LD_LIBRARY_PATH # meson test points it at the build tree: the test is without it
[ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v cc >/dev/null || exit 77
unshare -m true 2>/dev/null || exit 77
t=$(mktemp -d) || exit 1
trap 'rm -rf "$t"' EXIT
awk '/^## A short C example/{f=1} f&&/^```c/{p=1;next} p&&/^```$/{exit} p' \
    "$src/README.md" > "$t/ex.c"
cp -a /etc "$t/etc"
cat > "$t/run.sh" <<EOS
set -e
mount -t tmpfs none /usr/local
mount --bind "$t/etc" /etc
meson install -C "$build" --no-rebuild >/dev/null
cd "$t"
cc ex.c \$(pkg-config --cflags --libs mpbroker) -o ex
"$build/mpbroker-server" -q -s "$t/s" & pid=\$!
for i in 1 2 3 4 5 6 7 8 9 10; do [ -S "$t/s" ] && break; sleep 0.2; done
rc=0
MPBROKER_ADDRESS=unix:$t/s ./ex > out || rc=1
MPBROKER_ADDRESS=unix:$t/s ./ex >> out || rc=1
kill \$pid
wait \$pid
exit \$rc
EOS
unshare -m sh "$t/run.sh" || { echo "install test failed"; exit 1; }
printf 'runs = 1\nruns = 2\n' | cmp - "$t/out" || { cat "$t/out"; exit 1; }
echo "the README's C example runs after meson install"
