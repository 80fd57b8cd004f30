#!/usr/bin/env bash
# Makes the bad-certificate fixtures for the integration tests (run after scripts/lib/devenv.sh DIR PORT).
#
# Usage: tests/integration/mkfixtures.sh DIR
#
# Creates under DIR/pki/bad/ (idempotent: existing, still-correct fixtures are kept):
#   other-ca.{crt,key}   an unrelated CA
#   foreign.{crt,key}    client cert CN=recording, URI SAN spiffe://tenantkms.dev/recording, signed by other-ca
#   expired.{crt,key}    same identity, signed by the dev CA, valid 2020-01-01..2020-01-02
#   notyet.{crt,key}     same identity, signed by the dev CA, valid from 2099-01-01
#   revoked.{crt,key}    same identity, signed by the dev CA, valid, listed in DIR/pki/crl.pem
#   unlisted.{crt,key}   signed by the dev CA, URI SAN spiffe://tenantkms.dev/unlisted: a valid
#                        identity that no policy rule names
#   crl-none.pem         a fresh CRL of the dev CA revoking nothing
#   crl-revoked.pem      the dev CA's CRL revoking revoked.crt (also installed as DIR/pki/crl.pem)
#   crl-globex.pem       revoking revoked.crt and DIR/pki/clients/integration-globex.crt
# and DIR/clients/{foreign,expired,notyet,revoked,unlisted}.conf (endpoint of recording.conf).
set -euo pipefail

# shellcheck disable=SC2034  # used by the tkms_* functions of devenv.sh
TKMS_LOG_PREFIX=mkfixtures
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source-path=SCRIPTDIR/../.. source=scripts/lib/devenv.sh
source "$here/../../scripts/lib/devenv.sh"

# sign_with_dates CRT KEY CN EXTFILE CACRT CAKEY STARTDATE ENDDATE
# OpenSSL 3.0's `x509 -req` only has -days (-not_before/-not_after came in 3.4), so
# fixed validity dates need `openssl ca` with a throwaway database.
sign_with_dates() {
  local crt=$1 key=$2 cn=$3 ext=$4 cacrt=$5 cakey=$6 start=$7 end=$8
  local cadir="$TKMS_TMP/ca-$RANDOM$RANDOM"
  mkdir -p -- "$cadir"
  : >"$cadir/index.txt"
  openssl rand -hex 16 >"$cadir/serial"
  cat >"$cadir/ca.cnf" <<EOF
[ca]
default_ca = dev
[dev]
dir = $cadir
database = \$dir/index.txt
new_certs_dir = \$dir
serial = \$dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
[policy_any]
commonName = supplied
EOF
  openssl req -config "$TKMS_TMP/req.cnf" -new -key "$key" -subj "/CN=$cn" -sha256 \
    -out "$cadir/leaf.csr" 2>/dev/null || tkms_die "cannot create CSR for $crt"
  openssl ca -batch -notext -config "$cadir/ca.cnf" -cert "$cacrt" -keyfile "$cakey" \
    -in "$cadir/leaf.csr" -startdate "$start" -enddate "$end" \
    -extfile "$ext" -out "$crt.tmp" >/dev/null 2>"$cadir/ca.err" ||
    { cat -- "$cadir/ca.err" >&2; tkms_die "openssl ca failed for $crt"; }
  chmod 0644 "$crt.tmp"
  mv -f -- "$crt.tmp" "$crt"
}

# verify_error CRT CAFILE: the error line of `openssl verify` ("" if it verifies).
verify_error() {
  local out
  if out=$(openssl verify -CAfile "$2" "$1" 2>&1); then
    printf '\n'
  else
    printf '%s\n' "$out" | grep -m1 '^error' || printf 'unreadable\n'
  fi
}

# ensure_dated CRT KEY EXTFILE START END EXPECT: cert with fixed dates, signed by the dev CA,
# that `openssl verify` rejects with an error containing EXPECT.
ensure_dated() {
  local crt=$1 key=$2 ext=$3 start=$4 end=$5 expect=$6 why=created
  tkms_ensure_key "$key"
  if [[ -s "$crt" ]] && tkms_cert_matches_key "$crt" "$key" &&
    [[ "$(verify_error "$crt" "$pki/ca.crt")" == *"$expect"* ]]; then
    return 0
  fi
  [[ -e "$crt" ]] && why=reissued
  sign_with_dates "$crt" "$key" recording "$ext" "$pki/ca.crt" "$pki/ca.key" "$start" "$end"
  local err
  err=$(verify_error "$crt" "$pki/ca.crt")
  [[ "$err" == *"$expect"* ]] || tkms_die "$crt: expected '$expect' from openssl verify, got '$err'"
  tkms_note "$why $crt"
}

if [[ $# -ne 1 || "$1" == -h || "$1" == --help ]]; then
  echo "usage: $0 DIR   (DIR set up by scripts/lib/devenv.sh)" >&2
  exit 2
fi
[[ -d "$1" ]] || tkms_die "$1: no such directory (run scripts/lib/devenv.sh first)"
dir=$(cd -- "$1" && pwd -P)
pki="$dir/pki"
bad="$pki/bad"
for f in "$pki/ca.crt" "$pki/ca.key" "$dir/clients/recording.conf"; do
  [[ -s "$f" ]] || tkms_die "$f missing (run scripts/lib/devenv.sh $dir PORT first)"
done
tkms_tmpdir
tkms_mkdir "$bad"

tkms_client_ext "$TKMS_TMP/recording.ext" recording

# An unrelated CA, and a client cert with the recording identity signed by it.
tkms_ensure_ca "$bad" other-ca "tenantkms other CA (untrusted)"
tkms_ensure_leaf "$bad/foreign.crt" "$bad/foreign.key" recording "$TKMS_TMP/recording.ext" \
  "$bad/other-ca.crt" "$bad/other-ca.key"
[[ "$(verify_error "$bad/foreign.crt" "$pki/ca.crt")" == *"unable to get local issuer"* ]] ||
  tkms_die "$bad/foreign.crt unexpectedly verifies against the dev CA"

# Signed by the dev CA, outside their validity period.
ensure_dated "$bad/expired.crt" "$bad/expired.key" "$TKMS_TMP/recording.ext" \
  20200101000000Z 20200102000000Z "certificate has expired"
ensure_dated "$bad/notyet.crt" "$bad/notyet.key" "$TKMS_TMP/recording.ext" \
  20990101000000Z 21000101000000Z "certificate is not yet valid"

# Signed by the dev CA and valid, but revoked; and one whom no policy rule names.
tkms_ensure_leaf "$bad/revoked.crt" "$bad/revoked.key" recording "$TKMS_TMP/recording.ext" \
  "$pki/ca.crt" "$pki/ca.key"
tkms_client_ext "$TKMS_TMP/unlisted.ext" unlisted
tkms_ensure_leaf "$bad/unlisted.crt" "$bad/unlisted.key" unlisted "$TKMS_TMP/unlisted.ext" \
  "$pki/ca.crt" "$pki/ca.key"

# CRLs for the revocation tests; the one kmsd.conf names (tls_crl) revokes revoked.crt.
tkms_ensure_crl "$bad/crl-none.pem" "$pki/ca.crt" "$pki/ca.key"
tkms_ensure_crl "$bad/crl-revoked.pem" "$pki/ca.crt" "$pki/ca.key" "$bad/revoked.crt"
tkms_ensure_crl "$bad/crl-globex.pem" "$pki/ca.crt" "$pki/ca.key" "$bad/revoked.crt" \
  "$pki/clients/integration-globex.crt"
if ! cmp -s -- "$bad/crl-revoked.pem" "$pki/crl.pem"; then
  cp -- "$bad/crl-revoked.pem" "$pki/crl.pem.tmp"
  mv -f -- "$pki/crl.pem.tmp" "$pki/crl.pem"
  tkms_note "installed $bad/crl-revoked.pem as $pki/crl.pem"
fi

# Client configs: the endpoint line of recording.conf, the bad cert and key.
endpoint=$(grep -m1 '^endpoint[[:space:]]*=' "$dir/clients/recording.conf") ||
  tkms_die "no endpoint line in $dir/clients/recording.conf"
for name in foreign expired notyet revoked unlisted; do
  tkms_write_file "$dir/clients/$name.conf" 0600 "$endpoint
ca = $pki/ca.crt
cert = $bad/$name.crt
key = $bad/$name.key
"
done
