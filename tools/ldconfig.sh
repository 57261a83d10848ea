#!/bin/sh
# Run by `meson install` after libmpbroker is installed (meson.build): refresh the
# dynamic linker's cache, so that a program built against the library runs at once, as
# the README's C example promises. Debian searches /usr/local/lib/<triplet>, the
# default libdir, but only through that cache. Skipped for a staged install ($DESTDIR:
# a package build, whose package runs ldconfig itself) and when not root (the cache is
# root's). $1: the directory the library went to.
libdir=$1
[ -n "$DESTDIR" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "mpbroker: not root, so ldconfig was not run: a program linked against" \
         "libmpbroker needs LD_LIBRARY_PATH=$libdir, or -Wl,-rpath,$libdir"
    exit 0
fi
PATH=$PATH:/sbin:/usr/sbin
ldconfig || { echo "mpbroker: ldconfig failed"; exit 0; }
# A prefix outside the linker's search path (--prefix /opt/mpbroker): say what to do.
if ! ldconfig -p | grep -q " => $libdir/libmpbroker.so"; then
    echo "mpbroker: $libdir is not in the dynamic linker's search path: add it to" \
         "/etc/ld.so.conf.d/ and run ldconfig, or link with -Wl,-rpath,$libdir"
fi
exit 0
