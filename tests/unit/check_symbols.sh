#!/usr/bin/env bash
# Pins libtenantkey's ABI surface: the dynamic symbols defined by libtenantkey.so must equal tests/unit/tenantkey.symbols.
#
# Usage: check_symbols.sh LIBTENANTKEY.SO SYMBOLS_FILE
# Adding a public function means adding it to the list (and documenting it in tenantkey.h);
# anything else leaking out of the library (hidden visibility broken) fails here.
set -euo pipefail
lib=$1 list=$2
echo "1..2"
rc=0
actual=$(nm -D --defined-only "$lib" | awk 'NF >= 3 {print $3}' | sort -u)
expected=$(grep -v -e '^#' -e '^[[:space:]]*$' "$list" | sort -u)
if [[ "$actual" == "$expected" ]]; then
  echo "ok 1 - exported symbols equal $(basename "$list") ($(wc -l <<<"$actual") symbols)"
else
  echo "not ok 1 - exported symbols differ from $(basename "$list") (< expected, > actual)"
  diff <(echo "$expected") <(echo "$actual") | sed 's/^/# /' || true
  rc=1
fi
if grep -qv '^tk_' <<<"$actual"; then
  echo "not ok 2 - every exported symbol has the tk_ prefix"
  grep -v '^tk_' <<<"$actual" | sed 's/^/# /'
  rc=1
else
  echo "ok 2 - every exported symbol has the tk_ prefix"
fi
exit $rc
