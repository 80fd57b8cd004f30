#!/usr/bin/env bash
# Builds the libFuzzer targets with clang straight from the sources (the project's compiler is gcc).
#
# Usage: tests/fuzz/build.sh OUTDIR
# Produces OUTDIR/fuzz_{policy,frame,request,envelope,config}, built with
# -fsanitize=fuzzer,address,undefined, and OUTDIR/seeds (writes seed inputs).
set -euo pipefail

out=${1:?usage: tests/fuzz/build.sh OUTDIR}
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
cc=${CLANG:-clang}
command -v "$cc" >/dev/null 2>&1 || { echo "build.sh: $cc not found" >&2; exit 77; }
mkdir -p -- "$out"
gen="$out/gen"
mkdir -p -- "$gen"

# The wire messages: kms_wire.c and every request/envelope target need the protobuf-c code.
protoc-c --proto_path="$root/proto" --c_out="$gen" "$root/proto/kms.proto"

# UBSan fatal (-fno-sanitize-recover) so libFuzzer sees it as a crash.
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
  -I"$root/kmsd" -I"$root/common" -I"$root/libtenantkey" -I"$gen")
wire=("$root/common/kms_wire.c" "$root/common/kms_auditsum.c" "$root/common/kms_err.c"
  "$gen/kms.pb-c.c")
pbc=$(pkg-config --cflags --libs libprotobuf-c)

# build NAME SOURCES... [-- LIBS]: one target; objects are not shared (each is small).
build() {
  local name=$1
  shift
  # shellcheck disable=SC2068  # word lists on purpose
  "$cc" "${flags[@]}" -o "$out/$name" "$@"
}

# shellcheck disable=SC2046,SC2086  # pkg-config output is a word list
build fuzz_policy "$root/tests/fuzz/fuzz_policy.c" "$root/kmsd/policy.c" "${wire[@]}" \
  $(pkg-config --cflags --libs jansson libcrypto) $pbc
# shellcheck disable=SC2086
build fuzz_frame "$root/tests/fuzz/fuzz_frame.c" "$root/common/kms_frame.c" "${wire[@]}" $pbc
# shellcheck disable=SC2086
build fuzz_request "$root/tests/fuzz/fuzz_request.c" "${wire[@]}" $pbc
# shellcheck disable=SC2086
build fuzz_envelope "$root/tests/fuzz/fuzz_envelope.c" "$root/libtenantkey/envelope.c" \
  "${wire[@]}" $pbc
# shellcheck disable=SC2086
build fuzz_config "$root/tests/fuzz/fuzz_config.c" "$root/kmsd/config.c" "$root/kmsd/log.c" \
  "$root/common/kms_conf.c" "$root/common/kms_frame.c" "$root/common/kms_err.c"

# The seed writer is an ordinary program (no fuzzer runtime).
# shellcheck disable=SC2086
"$cc" -std=c11 -D_GNU_SOURCE -O1 -Wall -Wextra -Werror -I"$root/common" -I"$gen" \
  -o "$out/seeds" "$root/tests/fuzz/seeds.c" "$root/common/kms_frame.c" "$root/common/kms_err.c" \
  "$gen/kms.pb-c.c" $pbc
