#!/usr/bin/env bash
# Sets up (idempotently) a tenantkms dev environment: dev PKI, SoftHSM2 token, kmsd and client configs.
#
# Usage: scripts/lib/devenv.sh DIR PORT
#
# Creates under DIR (made absolute):
#   pki/ca.{crt,key}              dev CA (EC P-256, 10 years)
#   pki/server.{crt,key}          kmsd server cert (CN kmsd, SAN DNS:localhost,IP:127.0.0.1)
#   pki/clients/<p>.{crt,key}     client certs, URI SAN spiffe://tenantkms.dev/<p>
#   pki/clients/integration-<t>.{crt,key}  tenant-bound client certs, URI SAN
#                                 spiffe://tenantkms.dev/tenant/<t>/integration (t: acme, globex)
#   pki/crl.pem                   CRL of the dev CA (empty unless a test revoked something)
#   hsm/softhsm2.conf, hsm/tokens/, hsm/pin, hsm/so-pin, and a token labelled "tenantkms"
#                                 with root key v1 made by the key ceremony (`kmsctl root
#                                 create`, SO PIN) when the token is new, so it can be rotated
#   kmsd.conf, clients/<p>.conf   (rewritten each run, so a new PORT takes effect)
#   env                           "export SOFTHSM2_CONF=..." (source it)
#
# A second run reuses everything that exists and is still valid: it never regenerates an
# existing CA or token; it reissues a leaf certificate only if it is missing, does not
# verify against the CA (e.g. expired), or does not match its key.
# Prints one line to stderr per thing it creates or changes, nothing else on success.
#
# kmsd.conf points `policy` at the repository's policies/ directory (the example policies).
#
# Environment: PKCS11_MODULE (default /usr/lib/softhsm/libsofthsm2.so) for kmsd.conf;
# KMSD_EXTRA_CONF, if set, is appended verbatim to kmsd.conf; KMSCTL, the kmsctl to run the
# key ceremony with (default build/tools/kmsctl); TKMS_NO_ROOT_CEREMONY=1 skips the ceremony
# (kmsd then makes a legacy root that cannot be rotated, as before root rotation existed).
#
# The file can also be sourced (by tests/integration/mkfixtures.sh) for its tkms_* functions.

TKMS_PRINCIPALS=(recording storage ai officer auditor)
# Tenant-bound principals, NAME=SAN-PATH: policies/integration.json grants each its own tenant.
TKMS_BOUND_PRINCIPALS=(integration-acme=tenant/acme/integration
  integration-globex=tenant/globex/integration)
TKMS_REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
TKMS_SPIFFE_DOMAIN=tenantkms.dev
TKMS_TOKEN_LABEL=tenantkms

tkms_note() { printf '%s: %s\n' "${TKMS_LOG_PREFIX:-devenv}" "$*" >&2; }
tkms_die() { printf '%s: error: %s\n' "${TKMS_LOG_PREFIX:-devenv}" "$*" >&2; exit 1; }

# tkms_tmpdir: a private temporary directory, removed on exit (sets TKMS_TMP), holding
# TKMS_TMP/req.cnf: a minimal config for `openssl req`, so the system openssl.cnf
# (or $OPENSSL_CONF) cannot add extensions or prompt. Call it in the main shell, not in $(...).
tkms_tmpdir() {
  [[ -n "${TKMS_TMP:-}" && -d "$TKMS_TMP" ]] && return 0
  TKMS_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tkms-devenv.XXXXXX")
  # shellcheck disable=SC2064  # expand now: the path is fixed
  trap "rm -rf -- '$TKMS_TMP'" EXIT
  cat >"$TKMS_TMP/req.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
}

# tkms_genkey KEYFILE: EC P-256 private key (PKCS#8 PEM), mode 0600.
tkms_genkey() {
  local key=$1
  (
    umask 077
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
      -pkeyopt ec_param_enc:named_curve -out "$key.tmp" 2>/dev/null
  ) || tkms_die "cannot generate key $key"
  chmod 0600 "$key.tmp"
  mv -f -- "$key.tmp" "$key"
}

# tkms_ensure_key KEYFILE: create the key if missing.
tkms_ensure_key() {
  local key=$1
  if ! { [[ -s "$key" ]] && openssl pkey -in "$key" -noout 2>/dev/null; }; then
    [[ -e "$key" ]] && tkms_die "$key exists but is not a readable private key; remove it to start over"
    tkms_genkey "$key"
    tkms_note "created $key"
  fi
  chmod 0600 "$key"
}

# tkms_cert_matches_key CERT KEY: the certificate carries KEY's public key.
tkms_cert_matches_key() {
  local a b
  a=$(openssl x509 -in "$1" -noout -pubkey 2>/dev/null) || return 1
  b=$(openssl pkey -in "$2" -pubout 2>/dev/null) || return 1
  [[ -n "$a" && "$a" == "$b" ]]
}

# tkms_cert_ok CERT KEY CAFILE: the cert exists, verifies against CAFILE now, matches KEY.
tkms_cert_ok() {
  local cert=$1 key=$2 ca=$3
  [[ -s "$cert" ]] || return 1
  openssl verify -CAfile "$ca" "$cert" >/dev/null 2>&1 || return 1
  tkms_cert_matches_key "$cert" "$key"
}

# tkms_self_signed_ca CRT KEY CN: self-signed CA certificate, 10 years.
tkms_self_signed_ca() {
  local crt=$1 key=$2 cn=$3
  openssl req -config "$TKMS_TMP/req.cnf" -new -x509 -key "$key" -subj "/CN=$cn" -sha256 \
    -days 3650 -extensions v3_ca -set_serial "0x$(openssl rand -hex 16)" \
    -out "$crt.tmp" 2>/dev/null || tkms_die "cannot create CA certificate $crt"
  chmod 0644 "$crt.tmp"
  mv -f -- "$crt.tmp" "$crt"
}

# tkms_ensure_ca PKIDIR BASENAME CN: CA key + self-signed cert under PKIDIR.
# Never replaces an existing CA.
tkms_ensure_ca() {
  local dir=$1 base=$2 cn=$3
  local crt="$dir/$base.crt" key="$dir/$base.key"
  if [[ ! -s "$key" ]]; then
    # A CA without its key still verifies; only signing a new cert fails (tkms_sign_leaf).
    [[ -s "$crt" ]] && return 0
    tkms_genkey "$key"
    tkms_note "created $key"
  fi
  chmod 0600 "$key"
  if [[ -s "$crt" ]]; then
    tkms_cert_matches_key "$crt" "$key" ||
      tkms_die "$crt does not match $key; remove $dir to start over"
    return 0
  fi
  tkms_self_signed_ca "$crt" "$key" "$cn"
  tkms_note "created $crt"
  return 0
}

# tkms_sign_leaf CRT KEY CN EXTFILE CACRT CAKEY DAYS: CSR for KEY, signed by the CA.
# (OpenSSL 3.0 `x509 -req` does not copy CSR extensions; all come from EXTFILE.)
tkms_sign_leaf() {
  local crt=$1 key=$2 cn=$3 ext=$4 cacrt=$5 cakey=$6 days=$7
  [[ -s "$cakey" ]] ||
    tkms_die "cannot sign $crt: CA key $cakey is missing (remove $(dirname -- "$cacrt") to start over)"
  openssl req -config "$TKMS_TMP/req.cnf" -new -key "$key" -subj "/CN=$cn" -sha256 \
    -out "$TKMS_TMP/leaf.csr" 2>/dev/null || tkms_die "cannot create CSR for $crt"
  openssl x509 -req -in "$TKMS_TMP/leaf.csr" -CA "$cacrt" -CAkey "$cakey" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$days" \
    -extfile "$ext" -out "$crt.tmp" 2>/dev/null || tkms_die "cannot sign $crt"
  chmod 0644 "$crt.tmp"
  mv -f -- "$crt.tmp" "$crt"
}

# tkms_client_ext FILE PRINCIPAL: extensions of a client certificate.
tkms_client_ext() {
  cat >"$1" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:spiffe://$TKMS_SPIFFE_DOMAIN/$2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
}

# tkms_server_ext FILE: extensions of the kmsd server certificate.
tkms_server_ext() {
  cat >"$1" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
}

# tkms_ensure_leaf CRT KEY CN EXTFILE CACRT CAKEY: key if missing; cert if missing/invalid.
tkms_ensure_leaf() {
  local crt=$1 key=$2 cn=$3 ext=$4 cacrt=$5 cakey=$6 why=created
  tkms_ensure_key "$key"
  tkms_cert_ok "$crt" "$key" "$cacrt" && return 0
  [[ -e "$crt" ]] && why="reissued (did not verify or match its key)"
  tkms_sign_leaf "$crt" "$key" "$cn" "$ext" "$cacrt" "$cakey" 825
  tkms_note "$why $crt"
}

# tkms_write_file FILE MODE CONTENT: write only if the content differs; note it.
tkms_write_file() {
  local f=$1 mode=$2 content=$3
  if [[ -f "$f" ]] && [[ "$(cat -- "$f")" == "${content%$'\n'}" ]]; then
    chmod "$mode" "$f"
    return 0
  fi
  local what=created
  [[ -e "$f" ]] && what=updated
  (umask 077 && printf '%s' "$content" >"$f.tmp") || tkms_die "cannot write $f"
  chmod "$mode" "$f.tmp"
  mv -f -- "$f.tmp" "$f"
  tkms_note "$what $f"
}

# tkms_mkdir DIR...: directories with mode 0700.
tkms_mkdir() {
  local d
  for d in "$@"; do
    mkdir -p -- "$d"
    chmod 0700 "$d"
  done
}

# tkms_token_labels CONF: the labels of initialised tokens, one a line.
tkms_token_labels() {
  SOFTHSM2_CONF=$1 softhsm2-util --show-slots 2>/dev/null |
    sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' | sed 's/[[:space:]]*$//'
}

tkms_setup_pki() {
  local dir=$1 pki="$1/pki" p
  tkms_mkdir "$pki" "$pki/clients"
  tkms_ensure_ca "$pki" ca "tenantkms dev CA"
  tkms_server_ext "$TKMS_TMP/server.ext"
  tkms_ensure_leaf "$pki/server.crt" "$pki/server.key" kmsd "$TKMS_TMP/server.ext" \
    "$pki/ca.crt" "$pki/ca.key"
  for p in "${TKMS_PRINCIPALS[@]}"; do
    tkms_client_ext "$TKMS_TMP/client.ext" "$p"
    tkms_ensure_leaf "$pki/clients/$p.crt" "$pki/clients/$p.key" "$p" \
      "$TKMS_TMP/client.ext" "$pki/ca.crt" "$pki/ca.key"
  done
  for p in "${TKMS_BOUND_PRINCIPALS[@]}"; do
    tkms_client_ext "$TKMS_TMP/client.ext" "${p#*=}"
    tkms_ensure_leaf "$pki/clients/${p%%=*}.crt" "$pki/clients/${p%%=*}.key" "${p%%=*}" \
      "$TKMS_TMP/client.ext" "$pki/ca.crt" "$pki/ca.key"
  done
  tkms_ensure_crl "$pki/crl.pem" "$pki/ca.crt" "$pki/ca.key"
}

# tkms_crl_ok CRL CACRT [CERT...]: CRL is signed by the CA, at least 30 days from its next
# update, and revokes exactly the given certificates.
tkms_crl_ok() {
  local crl=$1 ca=$2 next c out
  shift 2
  [[ -s "$crl" ]] || return 1
  openssl crl -in "$crl" -CAfile "$ca" -noout 2>&1 | grep -q 'verify OK' || return 1
  next=$(openssl crl -in "$crl" -noout -nextupdate 2>/dev/null) || return 1
  next=$(date -d "${next#nextUpdate=}" +%s 2>/dev/null) || return 1
  ((next > $(date +%s) + 30 * 86400)) || return 1
  [[ "$(openssl crl -in "$crl" -noout -text | grep -c 'Serial Number:')" == "$#" ]] || return 1
  for c in "$@"; do
    # (verify fails on a revoked cert: no pipe, or pipefail would hide the match)
    out=$(openssl verify -crl_check -CAfile "$ca" -CRLfile "$crl" "$c" 2>&1) && return 1
    [[ "$out" == *"certificate revoked"* ]] || return 1
  done
}

# tkms_gen_crl CRL CACRT CAKEY [CERT...]: a CRL signed by the CA that revokes the given
# certificates, valid 365 days (`openssl ca -gencrl` with a throwaway database).
tkms_gen_crl() {
  local crl=$1 cacrt=$2 cakey=$3 c
  shift 3
  local cadir="$TKMS_TMP/crl-$RANDOM$RANDOM"
  mkdir -p -- "$cadir"
  : >"$cadir/index.txt"
  # CRL numbers must grow: the time does.
  printf '%016X\n' "$(date +%s)" >"$cadir/crlnumber"
  cat >"$cadir/ca.cnf" <<EOF
[ca]
default_ca = dev
[dev]
dir = $cadir
database = \$dir/index.txt
crlnumber = \$dir/crlnumber
default_md = sha256
default_crl_days = 365
unique_subject = no
[crl_ext]
authorityKeyIdentifier = keyid:always
EOF
  for c in "$@"; do
    openssl ca -batch -config "$cadir/ca.cnf" -cert "$cacrt" -keyfile "$cakey" -revoke "$c" \
      >/dev/null 2>"$cadir/err" || { cat -- "$cadir/err" >&2; tkms_die "cannot revoke $c"; }
  done
  openssl ca -batch -config "$cadir/ca.cnf" -cert "$cacrt" -keyfile "$cakey" -gencrl \
    -crlexts crl_ext -out "$crl.tmp" >/dev/null 2>"$cadir/err" ||
    { cat -- "$cadir/err" >&2; tkms_die "cannot create CRL $crl"; }
  chmod 0644 "$crl.tmp"
  mv -f -- "$crl.tmp" "$crl"
}

# tkms_ensure_crl CRL CACRT CAKEY [CERT...]: keep CRL if tkms_crl_ok, else make it anew.
tkms_ensure_crl() {
  local crl=$1 cacrt=$2 cakey=$3 why=created
  shift 3
  tkms_crl_ok "$crl" "$cacrt" "$@" && return 0
  [[ -e "$crl" ]] && why=reissued
  tkms_gen_crl "$crl" "$cacrt" "$cakey" "$@"
  tkms_note "$why $crl"
}

tkms_setup_hsm() {
  local dir=$1 hsm="$1/hsm" conf
  conf="$hsm/softhsm2.conf"
  tkms_mkdir "$hsm" "$hsm/tokens"
  tkms_write_file "$conf" 0600 "# SoftHSM2 configuration (generated by scripts/lib/devenv.sh)
directories.tokendir = $hsm/tokens
objectstore.backend = file
log.level = ERROR
"
  local have_token=0
  if tkms_token_labels "$conf" | grep -Fxq -- "$TKMS_TOKEN_LABEL"; then
    have_token=1
  fi
  local f
  for f in pin so-pin; do
    if [[ ! -s "$hsm/$f" ]]; then
      ((have_token)) &&
        tkms_die "token '$TKMS_TOKEN_LABEL' exists but $hsm/$f is missing; remove $hsm to start over"
      (umask 077 && openssl rand -hex 16 >"$hsm/$f.tmp") || tkms_die "cannot write $hsm/$f"
      mv -f -- "$hsm/$f.tmp" "$hsm/$f"
      tkms_note "created $hsm/$f"
    fi
    chmod 0600 "$hsm/$f"
  done
  if ((!have_token)); then
    # PINs go on softhsm2-util's command line (briefly visible in ps); never printed.
    SOFTHSM2_CONF=$conf softhsm2-util --init-token --free --label "$TKMS_TOKEN_LABEL" \
      --pin "$(cat -- "$hsm/pin")" --so-pin "$(cat -- "$hsm/so-pin")" >/dev/null ||
      tkms_die "softhsm2-util --init-token failed"
    tkms_token_labels "$conf" | grep -Fxq -- "$TKMS_TOKEN_LABEL" ||
      tkms_die "token '$TKMS_TOKEN_LABEL' not found after init"
    tkms_note "created SoftHSM2 token '$TKMS_TOKEN_LABEL' in $hsm/tokens"
    TKMS_NEW_TOKEN=1
  fi
}

# tkms_root_ceremony DIR: root key v1, CKA_TRUSTED, made with the SO PIN (docs/LIFECYCLE.md),
# so the dev token's root can be rotated. Needs DIR/kmsd.conf (module, token, user PIN file).
tkms_root_ceremony() {
  local dir=$1 kmsctl=${KMSCTL:-$TKMS_REPO/build/tools/kmsctl}
  if [[ -n "${TKMS_NO_ROOT_CEREMONY:-}" ]]; then
    tkms_note "no key ceremony (TKMS_NO_ROOT_CEREMONY): kmsd will make a legacy root"
    return 0
  fi
  if [[ ! -x "$kmsctl" ]]; then
    tkms_note "warning: $kmsctl not built: no key ceremony; kmsd will make a legacy root that cannot be rotated"
    return 0
  fi
  SOFTHSM2_CONF="$dir/hsm/softhsm2.conf" "$kmsctl" root create --config "$dir/kmsd.conf" \
    --so-pin-file "$dir/hsm/so-pin" >/dev/null || tkms_die "key ceremony (kmsctl root create) failed"
  tkms_note "key ceremony: trusted root key v1 generated in token '$TKMS_TOKEN_LABEL'"
}

tkms_setup_configs() {
  local dir=$1 port=$2 p content
  local module=${PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
  [[ -e "$module" ]] || tkms_note "warning: PKCS#11 module $module not found"
  content="# kmsd configuration (generated by scripts/lib/devenv.sh)
listen = 127.0.0.1:$port
tls_cert = $dir/pki/server.crt
tls_key = $dir/pki/server.key
tls_ca = $dir/pki/ca.crt
pkcs11_module = $module
token_label = $TKMS_TOKEN_LABEL
pin_file = $dir/hsm/pin
keystore = sqlite:$dir/keystore.db
audit_dir = $dir/audit
node_name = dev-node
workers = 2
kek_cache_size = 4096
max_frame = 65536
tls_crl = $dir/pki/crl.pem
policy = $TKMS_REPO/policies
"
  if [[ -n "${KMSD_EXTRA_CONF:-}" ]]; then
    content+="${KMSD_EXTRA_CONF%$'\n'}"$'\n'
  fi
  tkms_write_file "$dir/kmsd.conf" 0600 "$content"

  tkms_mkdir "$dir/clients"
  for p in "${TKMS_PRINCIPALS[@]}" "${TKMS_BOUND_PRINCIPALS[@]%%=*}"; do
    tkms_write_client_conf "$dir" "$port" "$p" "$dir/pki/clients/$p.crt" "$dir/pki/clients/$p.key"
  done

  tkms_write_file "$dir/env" 0644 "# source this file: SoftHSM2 config of the tenantkms dev environment
export SOFTHSM2_CONF=$(printf '%q' "$dir/hsm/softhsm2.conf")
"
}

# tkms_write_client_conf DIR PORT NAME CERT KEY: DIR/clients/NAME.conf.
tkms_write_client_conf() {
  local dir=$1 port=$2 name=$3 cert=$4 key=$5
  tkms_write_file "$dir/clients/$name.conf" 0600 "endpoint = 127.0.0.1:$port
ca = $dir/pki/ca.crt
cert = $cert
key = $key
"
}

# tkms_abs_dir DIR: create DIR (0700 if new) and print its absolute path.
tkms_abs_dir() {
  local d=$1
  [[ -n "$d" ]] || tkms_die "empty directory"
  [[ "$d" != *[[:cntrl:]]* ]] || tkms_die "directory name has control characters"
  if [[ ! -d "$d" ]]; then
    (umask 077 && mkdir -p -- "$d") || tkms_die "cannot create $d"
  fi
  (cd -- "$d" && pwd -P)
}

tkms_devenv_main() {
  if [[ $# -ne 2 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 DIR PORT   (PORT 0: kmsd picks a free port)" >&2
    exit 2
  fi
  local dir port=$2
  if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || ((10#$port > 65535)); then
    tkms_die "bad port: $port"
  fi
  port=$((10#$port))
  local tool
  for tool in openssl softhsm2-util; do
    command -v "$tool" >/dev/null 2>&1 || tkms_die "$tool not found (run scripts/lib/deps.sh)"
  done
  dir=$(tkms_abs_dir "$1")
  tkms_tmpdir
  tkms_setup_pki "$dir"
  TKMS_NEW_TOKEN=0
  tkms_setup_hsm "$dir"
  tkms_setup_configs "$dir" "$port"
  if ((TKMS_NEW_TOKEN)); then
    tkms_root_ceremony "$dir"
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  tkms_devenv_main "$@"
fi
