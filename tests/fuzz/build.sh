#!/usr/bin/env bash
# Builds the libFuzzer targets with clang straight from the sources (the project's compiler is gcc).
#
# Usage: tests/fuzz/build.sh OUTDIR
# Produces OUTDIR/fuzz_policy, built with -fsanitize=fuzzer,address,undefined.
set -euo pipefail

out=${1:?usage: tests/fuzz/build.sh OUTDIR}
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
cc=${CLANG:-clang}
command -v "$cc" >/dev/null 2>&1 || { echo "build.sh: $cc not found" >&2; exit 77; }
mkdir -p -- "$out"
gen="$out/gen"
mkdir -p -- "$gen"

# kms_wire.c (tenant id and context rules the policy reuses) needs the protobuf-c header.
protoc-c --proto_path="$root/proto" --c_out="$gen" "$root/proto/kms.proto"

# UBSan fatal (-fno-sanitize-recover) so libFuzzer sees it as a crash.
flags=(-std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
  -I"$root/kmsd" -I"$root/common" -I"$gen")
# shellcheck disable=SC2046  # pkg-config output is a word list
"$cc" "${flags[@]}" -o "$out/fuzz_policy" \
  "$root/tests/fuzz/fuzz_policy.c" "$root/kmsd/policy.c" "$root/common/kms_wire.c" \
  "$gen/kms.pb-c.c" $(pkg-config --cflags --libs jansson libcrypto libprotobuf-c)
