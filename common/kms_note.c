/* C2SP signed notes and tlog checkpoints, verified in software with OpenSSL (no HSM needed). */
#include "kms_note.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "kms_err.h"

/* U+2014 EM DASH then a space: the start of every signature line. */
static const char sig_prefix[] = "\xe2\x80\x94 ";
#define SIG_PREFIX_LEN 4

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t
kms_b64_encode(char *out, size_t cap, const uint8_t *in, size_t len)
{
  size_t need = 4 * ((len + 2) / 3);
  size_t o = 0;

  if (cap < need + 1) {
    if (cap > 0) {
      out[0] = '\0';
    }
    return 0;
  }
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16;
    size_t left = len - i;
    if (left > 1) {
      v |= (uint32_t)in[i + 1] << 8;
    }
    if (left > 2) {
      v |= in[i + 2];
    }
    out[o++] = b64_alphabet[(v >> 18) & 63];
    out[o++] = b64_alphabet[(v >> 12) & 63];
    out[o++] = left > 1 ? b64_alphabet[(v >> 6) & 63] : '=';
    out[o++] = left > 2 ? b64_alphabet[v & 63] : '=';
  }
  out[o] = '\0';
  return o;
}

static int
b64_value(char c)
{
  const char *p = c != '\0' ? strchr(b64_alphabet, c) : NULL;
  return p != NULL ? (int)(p - b64_alphabet) : -1;
}

int
kms_b64_decode(uint8_t *out, size_t cap, size_t *out_len, const char *in, size_t len)
{
  size_t o = 0;

  *out_len = 0;
  if (len == 0 || len % 4 != 0) {
    return len == 0 ? KMS_OK : KMS_ERR_INVALID_ARGUMENT;
  }
  for (size_t i = 0; i < len; i += 4) {
    int v[4];
    size_t pad = 0;
    bool last = i + 4 == len;
    for (int j = 0; j < 4; j++) {
      if (last && j >= 2 && in[i + (size_t)j] == '=' && (j == 3 || in[i + 3] == '=')) {
        v[j] = 0;
        pad++;
        continue;
      }
      v[j] = b64_value(in[i + (size_t)j]);
      if (v[j] < 0) {
        return KMS_ERR_INVALID_ARGUMENT;
      }
    }
    uint32_t w =
        ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) | ((uint32_t)v[2] << 6) | (uint32_t)v[3];
    /* Canonical only: the bits that padding drops must be zero. */
    if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0)) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    if (o + 3 - pad > cap) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    out[o++] = (uint8_t)(w >> 16);
    if (pad < 2) {
      out[o++] = (uint8_t)(w >> 8);
    }
    if (pad < 1) {
      out[o++] = (uint8_t)w;
    }
  }
  *out_len = o;
  return KMS_OK;
}

bool
kms_note_name_ok(const char *name, size_t len)
{
  if (len == 0 || len > KMS_NOTE_NAME_MAX) {
    return false;
  }
  /* Stricter than the spec (which allows non-space Unicode): ASCII keeps names greppable. */
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c <= 0x20 || c >= 0x7f || c == '+') {
      return false;
    }
  }
  return true;
}

static int
sha256(uint8_t out[32], const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len,
       const uint8_t *c, size_t c_len)
{
  int r = KMS_ERR_INTERNAL;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();

  if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
      EVP_DigestUpdate(ctx, a, a_len) != 1 || EVP_DigestUpdate(ctx, b, b_len) != 1 ||
      EVP_DigestUpdate(ctx, c, c_len) != 1 || EVP_DigestFinal_ex(ctx, out, NULL) != 1) {
    goto out;
  }
  r = KMS_OK;
out:
  EVP_MD_CTX_free(ctx);
  return r;
}

/* load_pkey turns vkey material into an OpenSSL key, refusing anything but the expected kind. */
static EVP_PKEY *
load_pkey(uint8_t type, const uint8_t *pub, size_t pub_len)
{
  EVP_PKEY *pk = NULL;
  const uint8_t *p = pub;
  char group[32] = "";

  if (type == KMS_NOTE_SIG_ED25519) {
    if (pub_len != 32) {
      return NULL;
    }
    return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, pub_len);
  }
  if (type != KMS_NOTE_SIG_ECDSA || pub_len > KMS_NOTE_PUB_MAX) {
    return NULL;
  }
  pk = d2i_PUBKEY(NULL, &p, (long)pub_len);
  if (pk == NULL || p != pub + pub_len || !EVP_PKEY_is_a(pk, "EC") ||
      EVP_PKEY_get_group_name(pk, group, sizeof(group), NULL) != 1 ||
      strcmp(group, "prime256v1") != 0) {
    EVP_PKEY_free(pk);
    return NULL;
  }
  return pk;
}

static int
key_id(uint32_t *out, const char *name, uint8_t type, const uint8_t *pub, size_t pub_len)
{
  uint8_t h[32];
  uint8_t sep[2] = {0x0a, type};
  int r;

  if (type == KMS_NOTE_SIG_ECDSA) {
    /* signed-note: for type 0x02 the ID is the truncated hash of the DER SPKI alone. */
    r = sha256(h, pub, pub_len, NULL, 0, NULL, 0);
  } else {
    r = sha256(h, (const uint8_t *)name, strlen(name), sep, 2, pub, pub_len);
  }
  if (r != KMS_OK) {
    return r;
  }
  *out = ((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) | ((uint32_t)h[2] << 8) | h[3];
  return KMS_OK;
}

int
kms_note_vkey_make(struct kms_note_vkey *out, const char *name, uint8_t type, const uint8_t *pub,
                   size_t pub_len)
{
  int r = KMS_ERR_INVALID_ARGUMENT;
  EVP_PKEY *pk = NULL;

  memset(out, 0, sizeof(*out));
  if (name == NULL || !kms_note_name_ok(name, strlen(name)) || pub == NULL ||
      pub_len > KMS_NOTE_PUB_MAX) {
    goto out;
  }
  if ((pk = load_pkey(type, pub, pub_len)) == NULL) {
    goto out;
  }
  memcpy(out->name, name, strlen(name) + 1);
  out->type = type;
  memcpy(out->pub, pub, pub_len);
  out->pub_len = pub_len;
  if ((r = key_id(&out->id, name, type, pub, pub_len)) != KMS_OK) {
    goto out;
  }
  r = KMS_OK;
out:
  EVP_PKEY_free(pk);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int
kms_note_vkey_format(char *out, size_t cap, const struct kms_note_vkey *k)
{
  uint8_t raw[1 + KMS_NOTE_PUB_MAX];
  char b64[4 * (sizeof(raw) + 2) / 3 + 1];
  int n;

  raw[0] = k->type;
  memcpy(raw + 1, k->pub, k->pub_len);
  if (kms_b64_encode(b64, sizeof(b64), raw, 1 + k->pub_len) == 0) {
    return KMS_ERR_INTERNAL;
  }
  n = snprintf(out, cap, "%s+%08" PRIx32 "+%s", k->name, k->id, b64);
  if (n < 0 || (size_t)n >= cap) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return KMS_OK;
}

static bool
is_space(char c)
{
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int
kms_note_vkey_parse(struct kms_note_vkey *out, const char *s, size_t len)
{
  int r = KMS_ERR_INVALID_ARGUMENT;
  const char *p1, *p2, *end;
  uint8_t raw[1 + KMS_NOTE_PUB_MAX];
  size_t raw_len = 0;
  char name[KMS_NOTE_NAME_MAX + 1];
  uint32_t id = 0;
  struct kms_note_vkey k;

  memset(out, 0, sizeof(*out));
  while (len > 0 && is_space(s[0])) {
    s++;
    len--;
  }
  while (len > 0 && is_space(s[len - 1])) {
    len--;
  }
  end = s + len;
  p1 = memchr(s, '+', len);
  p2 = p1 != NULL ? memchr(p1 + 1, '+', (size_t)(end - p1 - 1)) : NULL;
  if (p1 == NULL || p2 == NULL || p2 - p1 != 9 || !kms_note_name_ok(s, (size_t)(p1 - s))) {
    goto out;
  }
  memcpy(name, s, (size_t)(p1 - s));
  name[p1 - s] = '\0';
  for (const char *h = p1 + 1; h < p2; h++) {
    int v = (*h >= '0' && *h <= '9') ? *h - '0' : (*h >= 'a' && *h <= 'f') ? *h - 'a' + 10 : -1;
    if (v < 0) {
      goto out;
    }
    id = (id << 4) | (uint32_t)v;
  }
  if (kms_b64_decode(raw, sizeof(raw), &raw_len, p2 + 1, (size_t)(end - p2 - 1)) != KMS_OK ||
      raw_len < 2) {
    goto out;
  }
  if (kms_note_vkey_make(&k, name, raw[0], raw + 1, raw_len - 1) != KMS_OK || k.id != id) {
    goto out;
  }
  *out = k;
  r = KMS_OK;
out:
  return r;
}

int
kms_note_sig_verify(const struct kms_note_vkey *k, const uint8_t *msg, size_t msg_len,
                    const uint8_t *sig, size_t sig_len)
{
  int r = KMS_ERR_DECRYPT;
  EVP_PKEY *pk = NULL;
  EVP_MD_CTX *ctx = NULL;

  if ((pk = load_pkey(k->type, k->pub, k->pub_len)) == NULL || (ctx = EVP_MD_CTX_new()) == NULL) {
    goto out;
  }
  /* Ed25519 hashes internally (no digest); ECDSA signs SHA-256(text) with a DER signature. */
  if (EVP_DigestVerifyInit(ctx, NULL, k->type == KMS_NOTE_SIG_ECDSA ? EVP_sha256() : NULL, NULL,
                           pk) != 1) {
    goto out;
  }
  if (EVP_DigestVerify(ctx, sig, sig_len, msg, msg_len) != 1) {
    goto out;
  }
  r = KMS_OK;
out:
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pk);
  return r;
}

int
kms_note_format(char *out, size_t cap, size_t *out_len, const char *text, size_t text_len,
                const struct kms_note_vkey *k, const uint8_t *sig, size_t sig_len)
{
  uint8_t raw[4 + KMS_NOTE_SIG_MAX];
  char b64[4 * (sizeof(raw) + 2) / 3 + 1];
  size_t b64_len, name_len = strlen(k->name), need;

  *out_len = 0;
  if (text_len == 0 || text[text_len - 1] != '\n' || sig_len > KMS_NOTE_SIG_MAX) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  raw[0] = (uint8_t)(k->id >> 24);
  raw[1] = (uint8_t)(k->id >> 16);
  raw[2] = (uint8_t)(k->id >> 8);
  raw[3] = (uint8_t)k->id;
  memcpy(raw + 4, sig, sig_len);
  b64_len = kms_b64_encode(b64, sizeof(b64), raw, 4 + sig_len);
  need = text_len + 1 + SIG_PREFIX_LEN + name_len + 1 + b64_len + 1;
  if (b64_len == 0 || need > cap) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memcpy(out, text, text_len);
  out[text_len] = '\n';
  memcpy(out + text_len + 1, sig_prefix, SIG_PREFIX_LEN);
  memcpy(out + text_len + 1 + SIG_PREFIX_LEN, k->name, name_len);
  out[text_len + 1 + SIG_PREFIX_LEN + name_len] = ' ';
  memcpy(out + text_len + 2 + SIG_PREFIX_LEN + name_len, b64, b64_len);
  out[need - 1] = '\n';
  *out_len = need;
  return KMS_OK;
}

/* utf8_ok: valid UTF-8 (shortest forms, no surrogates) and no control character but '\n'. */
static bool
utf8_ok(const uint8_t *p, size_t len)
{
  size_t i = 0;
  while (i < len) {
    uint8_t c = p[i];
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      if ((c < 0x20 && c != '\n') || c == 0x7f) {
        return false;
      }
      i++;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf) {
      n = 1;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (len - i <= n) {
      return false;
    }
    for (size_t j = 1; j <= n; j++) {
      if ((p[i + j] & 0xc0) != 0x80) {
        return false;
      }
      cp = (cp << 6) | (p[i + j] & 0x3f);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

int
kms_note_verify(const char *note, size_t len, const struct kms_note_vkey *k, size_t *out_text_len)
{
  int r = KMS_ERR_INVALID_ARGUMENT;
  size_t text_len = 0, pos;
  size_t name_len = strlen(k->name);
  int verified = 0;

  *out_text_len = 0;
  if (len == 0 || len > KMS_NOTE_MAX || note[len - 1] != '\n' ||
      !utf8_ok((const uint8_t *)note, len)) {
    goto out;
  }
  /* The text ends at the last blank line: find the last "\n\n". */
  for (size_t i = len - 1; i > 0; i--) {
    if (note[i] == '\n' && note[i - 1] == '\n') {
      text_len = i;
      break;
    }
  }
  if (text_len == 0) {
    goto out;
  }
  pos = text_len + 1;
  if (pos >= len) {
    goto out; /* no signature line */
  }
  while (pos < len) {
    const char *line = note + pos;
    const char *nl = memchr(line, '\n', len - pos);
    size_t line_len = (size_t)(nl - line);
    const char *sp;
    uint8_t raw[4 + KMS_NOTE_SIG_MAX + 3];
    size_t raw_len = 0;
    uint32_t id;

    if (line_len < SIG_PREFIX_LEN || memcmp(line, sig_prefix, SIG_PREFIX_LEN) != 0) {
      goto out;
    }
    sp = memchr(line + SIG_PREFIX_LEN, ' ', line_len - SIG_PREFIX_LEN);
    if (sp == NULL ||
        !kms_note_name_ok(line + SIG_PREFIX_LEN, (size_t)(sp - line) - SIG_PREFIX_LEN)) {
      goto out;
    }
    pos += line_len + 1;
    if ((size_t)(sp - line) - SIG_PREFIX_LEN != name_len ||
        memcmp(line + SIG_PREFIX_LEN, k->name, name_len) != 0) {
      continue; /* someone else's signature (a witness, say): ignored */
    }
    /* Long signatures of unknown kinds only need to be skipped, not decoded. */
    if (kms_b64_decode(raw, sizeof(raw), &raw_len, sp + 1, (size_t)(nl - sp - 1)) != KMS_OK ||
        raw_len < 4) {
      if (line_len - (size_t)(sp - line) > 4 * sizeof(raw) / 3 + 4) {
        continue;
      }
      goto out;
    }
    id = ((uint32_t)raw[0] << 24) | ((uint32_t)raw[1] << 16) | ((uint32_t)raw[2] << 8) | raw[3];
    if (id != k->id) {
      continue; /* same name, another key (rotation): not ours to judge */
    }
    if (kms_note_sig_verify(k, (const uint8_t *)note, text_len, raw + 4, raw_len - 4) != KMS_OK) {
      r = KMS_ERR_DECRYPT; /* a known key's signature that fails spoils the whole note */
      goto out;
    }
    verified++;
  }
  if (verified == 0) {
    r = KMS_ERR_DECRYPT;
    goto out;
  }
  *out_text_len = text_len;
  r = KMS_OK;
out:
  return r;
}

int
kms_note_next(const char *buf, size_t len, size_t *out_start, size_t *out_note_len,
              size_t *out_consumed)
{
  size_t start = 0, pos, text_end = 0;
  int sigs = 0;

  *out_start = *out_note_len = *out_consumed = 0;
  while (start < len && buf[start] == '\n') {
    start++;
  }
  if (start == len) {
    *out_consumed = len;
    return KMS_ERR_NOT_FOUND;
  }
  for (size_t i = start + 1; i < len; i++) {
    if (buf[i] == '\n' && buf[i - 1] == '\n') {
      text_end = i;
      break;
    }
  }
  if (text_end == 0) {
    return KMS_ERR_TRUNCATED;
  }
  pos = text_end + 1;
  while (pos < len) {
    const char *nl;
    if (len - pos < SIG_PREFIX_LEN) {
      if (memcmp(buf + pos, sig_prefix, len - pos) == 0) {
        return KMS_ERR_TRUNCATED;
      }
      break;
    }
    if (memcmp(buf + pos, sig_prefix, SIG_PREFIX_LEN) != 0) {
      break;
    }
    nl = memchr(buf + pos, '\n', len - pos);
    if (nl == NULL) {
      return KMS_ERR_TRUNCATED;
    }
    pos = (size_t)(nl - buf) + 1;
    sigs++;
  }
  if (sigs == 0) {
    return KMS_ERR_TRUNCATED;
  }
  *out_start = start;
  *out_note_len = pos - start;
  while (pos < len && buf[pos] == '\n') {
    pos++;
  }
  *out_consumed = pos;
  return KMS_OK;
}

int
kms_checkpoint_format(char *out, size_t cap, size_t *out_len, const struct kms_checkpoint *cp)
{
  char b64[48];
  int n;

  *out_len = 0;
  if (!kms_note_name_ok(cp->origin, strlen(cp->origin)) ||
      kms_b64_encode(b64, sizeof(b64), cp->root, sizeof(cp->root)) == 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  n = snprintf(out, cap, "%s\n%" PRIu64 "\n%s\n", cp->origin, cp->size, b64);
  if (n < 0 || (size_t)n >= cap) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_len = (size_t)n;
  return KMS_OK;
}

int
kms_checkpoint_parse(struct kms_checkpoint *out, const char *text, size_t len)
{
  int r = KMS_ERR_INVALID_ARGUMENT;
  const char *line[3];
  size_t line_len[3];
  size_t pos = 0, root_len = 0;
  uint64_t size = 0;

  memset(out, 0, sizeof(*out));
  if (len == 0 || text[len - 1] != '\n') {
    goto out;
  }
  for (int i = 0; i < 3; i++) {
    const char *nl = pos < len ? memchr(text + pos, '\n', len - pos) : NULL;
    if (nl == NULL) {
      goto out;
    }
    line[i] = text + pos;
    line_len[i] = (size_t)(nl - line[i]);
    if (line_len[i] == 0) {
      goto out;
    }
    pos += line_len[i] + 1;
  }
  /* Extension lines: allowed, must be non-empty; their content is opaque to us. */
  while (pos < len) {
    const char *nl = memchr(text + pos, '\n', len - pos);
    if (nl == text + pos) {
      goto out;
    }
    pos = (size_t)(nl - text) + 1;
  }
  if (line_len[0] > KMS_NOTE_NAME_MAX) {
    goto out;
  }
  if (line_len[1] > 20 || (line_len[1] > 1 && line[1][0] == '0')) {
    goto out;
  }
  for (size_t i = 0; i < line_len[1]; i++) {
    unsigned d = (unsigned)(line[1][i] - '0');
    if (d > 9 || size > (UINT64_MAX - d) / 10) {
      goto out;
    }
    size = size * 10 + d;
  }
  if (kms_b64_decode(out->root, sizeof(out->root), &root_len, line[2], line_len[2]) != KMS_OK ||
      root_len != sizeof(out->root)) {
    goto out;
  }
  memcpy(out->origin, line[0], line_len[0]);
  out->origin[line_len[0]] = '\0';
  out->size = size;
  r = KMS_OK;
out:
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}
