#!/usr/bin/env bash
# Installs the build into a temporary DESTDIR and builds a tiny app against it with pkg-config, shared and static.
#
# Usage: check_install.sh BUILDDIR APP.c
# Proves what a service developer does: `meson install`, then
#   cc app.c $(pkg-config --cflags --libs tenantkey)                 (shared)
#   cc app.c $(pkg-config --cflags tenantkey) ... $(pkg-config --static --libs tenantkey)  (static)
# with PKG_CONFIG_PATH / PKG_CONFIG_SYSROOT_DIR / LD_LIBRARY_PATH pointing into the DESTDIR.
set -euo pipefail
build=$1 app=$2
cc=${CC:-cc}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tk-install.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
n=0 rc=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); echo "not ok $n - $*"; rc=1; }
echo "1..6"

if meson install -C "$build" --no-rebuild --destdir "$tmp/root" --quiet >"$tmp/install.log" 2>&1; then
  ok "meson install --destdir"
else
  notok "meson install --destdir"; sed 's/^/# /' "$tmp/install.log"; exit 1
fi
pc=$(find "$tmp/root" -name tenantkey.pc | head -1)
hdr=$(find "$tmp/root" -name tenantkey.h | head -1)
so=$(find "$tmp/root" -name 'libtenantkey.so' | head -1)
ar=$(find "$tmp/root" -name 'libtenantkey.a' | head -1)
if [[ -n "$pc" && -n "$hdr" && -n "$so" && -n "$ar" ]]; then
  ok "installed tenantkey.pc, tenantkey.h, libtenantkey.so, libtenantkey.a"
else
  notok "installed files missing (pc=$pc hdr=$hdr so=$so a=$ar)"; exit 1
fi
# Only the public header is installed: internal headers must not be needed.
if [[ $(find "$(dirname "$hdr")" -maxdepth 1 -name '*.h' | wc -l) -ge 1 ]] && \
   [[ -z "$(find "$tmp/root" -name 'tk_internal.h' -o -name 'cobblestone.h')" ]]; then
  ok "no internal header installed"
else
  notok "internal headers installed"
fi
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR=$tmp/root
# A sanitizer build installs an instrumented library: the app must link the runtime too.
# (nm's output is captured first: with pipefail, grep -q closing the pipe early fails nm.)
undef=$(nm -D --undefined-only "$so")
if grep -q '__asan_init\|__ubsan_handle' <<<"$undef"; then
  cc="$cc -fsanitize=address,undefined"
fi
libdir=$(dirname "$so")

# shellcheck disable=SC2046  # word splitting of pkg-config output is intended
if $cc -std=c11 -Wall -Werror -o "$tmp/app_shared" "$app" $(pkg-config --cflags --libs tenantkey) 2>"$tmp/cc1.log" &&
   out=$(LD_LIBRARY_PATH=$libdir "$tmp/app_shared" 2>&1) &&
   [[ "$(LD_LIBRARY_PATH=$libdir ldd "$tmp/app_shared")" == *"$libdir/libtenantkey.so"* ]]; then
  ok "shared: cc app.c \$(pkg-config --cflags --libs tenantkey) builds and runs ($out)"
else
  notok "shared build/run"; sed 's/^/# /' "$tmp/cc1.log"; echo "# ${out:-}"
fi

static_libs=$(pkg-config --static --libs tenantkey | sed 's/-ltenantkey\b/-l:libtenantkey.a/')
# shellcheck disable=SC2046,SC2086
if $cc -std=c11 -Wall -Werror -o "$tmp/app_static" "$app" $(pkg-config --cflags tenantkey) $static_libs 2>"$tmp/cc2.log" &&
   out=$("$tmp/app_static" 2>&1) && [[ "$(ldd "$tmp/app_static")" != *libtenantkey* ]]; then
  ok "static: libtenantkey.a with pkg-config --static --libs ($static_libs) builds and runs"
else
  notok "static build/run ($static_libs)"; sed 's/^/# /' "$tmp/cc2.log"; echo "# ${out:-}"
fi

# The header alone compiles as C++ too (extern "C").
if command -v c++ >/dev/null 2>&1; then
  if echo '#include <tenantkey.h>
int main() { return tk_strerror(0) == nullptr; }' | c++ -x c++ -std=c++11 -Wall -Werror $(pkg-config --cflags tenantkey) -fsyntax-only - 2>"$tmp/cxx.log"; then
    ok "tenantkey.h compiles as C++"
  else
    notok "tenantkey.h as C++"; sed 's/^/# /' "$tmp/cxx.log"
  fi
else
  ok "# SKIP no C++ compiler"
fi
exit $rc
