/* The envelope header (formats 1 and 2): canonical encoding, a strict, bounds-checked parser, and the body's context. */
#include "envelope.h"

#include <stdlib.h>
#include <string.h>

#include "kms_err.h"
#include "kms_wire.h"

/* ---- A bounds-checked reader: every getter consumes or fails ------------ */

struct cbs {
  const uint8_t *p;
  size_t len;
};

static int
cbs_skip_get(struct cbs *s, const uint8_t **out, size_t n)
{
  if (s->len < n) {
    return 0;
  }
  *out = s->p;
  s->p += n;
  s->len -= n;
  return 1;
}

static int
cbs_u8(struct cbs *s, uint8_t *out)
{
  const uint8_t *b;
  if (!cbs_skip_get(s, &b, 1)) {
    return 0;
  }
  *out = b[0];
  return 1;
}

static int
cbs_u16(struct cbs *s, uint16_t *out)
{
  const uint8_t *b;
  if (!cbs_skip_get(s, &b, 2)) {
    return 0;
  }
  *out = (uint16_t)((b[0] << 8) | b[1]);
  return 1;
}

static int
cbs_u32(struct cbs *s, uint32_t *out)
{
  const uint8_t *b;
  if (!cbs_skip_get(s, &b, 4)) {
    return 0;
  }
  *out = ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
  return 1;
}

/* cbs_string copies |n| bytes into |dst| (capacity n + 1) as a C string, refusing NUL. */
static int
cbs_string(struct cbs *s, char *dst, size_t n)
{
  const uint8_t *b;
  if (!cbs_skip_get(s, &b, n) || memchr(b, 0, n) != NULL) {
    return 0;
  }
  memcpy(dst, b, n);
  dst[n] = '\0';
  return 1;
}

/* ---- A bounds-checked writer -------------------------------------------- */

struct cbb {
  uint8_t *p;
  size_t cap, len;
  int ok;
};

static void
cbb_put(struct cbb *w, const void *src, size_t n)
{
  if (!w->ok || w->cap - w->len < n) {
    w->ok = 0;
    return;
  }
  memcpy(w->p + w->len, src, n);
  w->len += n;
}

static void
cbb_u8(struct cbb *w, uint8_t v)
{
  cbb_put(w, &v, 1);
}

static void
cbb_u16(struct cbb *w, uint16_t v)
{
  uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
  cbb_put(w, b, 2);
}

static void
cbb_u32(struct cbb *w, uint32_t v)
{
  uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  cbb_put(w, b, 4);
}

/* ---- Header ------------------------------------------------------------- */

void
tk_env_header_fix_pointers(struct tk_env_header *h)
{
  for (size_t i = 0; i < KMS_CONTEXT_MAX_ENTRIES; i++) {
    tkms__context_entry__init(&h->entries[i]);
    h->entries[i].key = h->keys[i];
    h->entries[i].value = h->values[i];
    h->ptrs[i] = &h->entries[i];
  }
}

static int
cmp_entry(const void *a, const void *b)
{
  const Tkms__ContextEntry *ea = *(Tkms__ContextEntry *const *)a;
  const Tkms__ContextEntry *eb = *(Tkms__ContextEntry *const *)b;
  return strcmp(ea->key, eb->key); /* bytewise, like kmsd's AAD */
}

/* The checks shared by set and parse: what kmsd would accept, and canonical order. */
static int
header_fields_ok(const struct tk_env_header *h, const char **why)
{
  if (h->format != TK_ENV_FORMAT_1 && h->format != TK_ENV_FORMAT_2) {
    *why = "format version";
    return 0;
  }
  if (!kms_wire_tenant_id_ok(h->tenant)) {
    *why = "tenant: invalid";
    return 0;
  }
  if (h->kek_version == 0) {
    *why = "KEK version: zero";
    return 0;
  }
  if (h->wrapped_len == 0 || h->wrapped_len > KMS_WRAPPED_KEY_MAX) {
    *why = "wrapped key: length";
    return 0;
  }
  if (h->format == TK_ENV_FORMAT_2 && h->wrapped_len == TK_ENV_SESSION_MARKER_LEN &&
      memcmp(h->wrapped, TK_ENV_SESSION_MARKER, TK_ENV_SESSION_MARKER_LEN) == 0) {
    *why = "wrapped key: a session marker in format 2 (session envelopes are format 1)";
    return 0;
  }
  if (h->n_context > KMS_CONTEXT_MAX_ENTRIES) {
    *why = "context: too many entries";
    return 0;
  }
  if (!kms_wire_context_ok(h->n_context, h->ptrs, why)) {
    return 0;
  }
  for (size_t i = 1; i < h->n_context; i++) {
    if (strcmp(h->keys[i - 1], h->keys[i]) >= 0) {
      *why = "context: keys not in canonical (sorted) order";
      return 0;
    }
  }
  return 1;
}

int
tk_env_header_set(struct tk_env_header *out, uint8_t format, const char *tenant,
                  uint32_t kek_version, const uint8_t *wrapped, size_t wrapped_len,
                  Tkms__ContextEntry *const *entries, size_t n_entries)
{
  const char *why = NULL;
  Tkms__ContextEntry *sorted[KMS_CONTEXT_MAX_ENTRIES];
  memset(out, 0, sizeof(*out));
  tk_env_header_fix_pointers(out);
  if (tenant == NULL || strlen(tenant) > KMS_TENANT_ID_MAX || wrapped == NULL ||
      wrapped_len == 0 || wrapped_len > KMS_WRAPPED_KEY_MAX ||
      n_entries > KMS_CONTEXT_MAX_ENTRIES || (n_entries > 0 && entries == NULL)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (n_entries > 0) {
    memcpy(sorted, entries, n_entries * sizeof(sorted[0]));
    qsort(sorted, n_entries, sizeof(sorted[0]), cmp_entry);
  }
  out->format = format;
  memcpy(out->tenant, tenant, strlen(tenant) + 1);
  out->kek_version = kek_version;
  memcpy(out->wrapped, wrapped, wrapped_len);
  out->wrapped_len = wrapped_len;
  for (size_t i = 0; i < n_entries; i++) {
    const char *k = sorted[i]->key != NULL ? sorted[i]->key : "";
    const char *v = sorted[i]->value != NULL ? sorted[i]->value : "";
    if (strlen(k) > KMS_CONTEXT_KEY_MAX || strlen(v) > KMS_CONTEXT_VALUE_MAX) {
      return KMS_ERR_INVALID_ARGUMENT;
    }
    memcpy(out->keys[i], k, strlen(k) + 1);
    memcpy(out->values[i], v, strlen(v) + 1);
  }
  out->n_context = n_entries;
  return header_fields_ok(out, &why) ? KMS_OK : KMS_ERR_INVALID_ARGUMENT;
}

/* The fields the body's context shares with the header, encoded the same way. */
static void
put_tenant(struct cbb *w, const struct tk_env_header *h)
{
  cbb_u8(w, (uint8_t)strlen(h->tenant));
  cbb_put(w, h->tenant, strlen(h->tenant));
}

static void
put_context(struct cbb *w, const struct tk_env_header *h)
{
  cbb_u8(w, (uint8_t)h->n_context);
  for (size_t i = 0; i < h->n_context; i++) {
    cbb_u8(w, (uint8_t)strlen(h->keys[i]));
    cbb_put(w, h->keys[i], strlen(h->keys[i]));
    cbb_u16(w, (uint16_t)strlen(h->values[i]));
    cbb_put(w, h->values[i], strlen(h->values[i]));
  }
}

int
tk_env_header_encode(uint8_t *out, size_t out_cap, size_t *out_len,
                     const struct tk_env_header *h)
{
  const char *why = NULL;
  struct cbb w = {out, out_cap, 0, 1};
  *out_len = 0;
  if (!header_fields_ok(h, &why)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  cbb_put(&w, TK_ENV_MAGIC, TK_ENV_MAGIC_LEN);
  cbb_u8(&w, h->format);
  cbb_u16(&w, 0); /* the header length, patched below */
  put_tenant(&w, h);
  cbb_u32(&w, h->kek_version);
  cbb_u16(&w, (uint16_t)h->wrapped_len);
  cbb_put(&w, h->wrapped, h->wrapped_len);
  put_context(&w, h);
  if (!w.ok || w.len > TK_ENV_HEADER_MAX) {
    if (out_cap > 0) {
      memset(out, 0, w.len < out_cap ? w.len : out_cap);
    }
    return KMS_ERR_INVALID_ARGUMENT;
  }
  out[4] = (uint8_t)(w.len >> 8);
  out[5] = (uint8_t)w.len;
  *out_len = w.len;
  return KMS_OK;
}

int
tk_env_header_peek_len(size_t *out_len, const uint8_t *buf, size_t len)
{
  *out_len = 0;
  size_t n = len < TK_ENV_MAGIC_LEN ? len : TK_ENV_MAGIC_LEN;
  if (memcmp(buf, TK_ENV_MAGIC, n) != 0) {
    return KMS_ERR_DECRYPT; /* not an envelope */
  }
  if (len > TK_ENV_MAGIC_LEN && buf[3] != TK_ENV_FORMAT_1 && buf[3] != TK_ENV_FORMAT_2) {
    return KMS_ERR_DECRYPT; /* a format we don't know */
  }
  if (len < TK_ENV_PREFIX_LEN) {
    return KMS_ERR_TRUNCATED;
  }
  size_t h = ((size_t)buf[4] << 8) | buf[5];
  if (h < TK_ENV_HEADER_MIN || h > TK_ENV_HEADER_MAX) {
    return KMS_ERR_DECRYPT;
  }
  *out_len = h;
  return KMS_OK;
}

static int
parse_fail(struct tk_env_header *out, const char **why, const char *reason)
{
  memset(out, 0, sizeof(*out));
  tk_env_header_fix_pointers(out);
  if (why != NULL) {
    *why = reason;
  }
  return KMS_ERR_DECRYPT;
}

int
tk_env_header_parse(struct tk_env_header *out, const uint8_t *buf, size_t len,
                    const char **why)
{
  struct cbs s = {buf, len};
  const uint8_t *magic;
  uint8_t version, tlen, n;
  uint16_t hlen, wlen;
  const char *reason = NULL;

  memset(out, 0, sizeof(*out));
  tk_env_header_fix_pointers(out);
  if (why != NULL) {
    *why = NULL;
  }
  if (buf == NULL && len > 0) {
    return parse_fail(out, why, "no input");
  }
  if (!cbs_skip_get(&s, &magic, TK_ENV_MAGIC_LEN) ||
      memcmp(magic, TK_ENV_MAGIC, TK_ENV_MAGIC_LEN) != 0) {
    return parse_fail(out, why, "magic");
  }
  if (!cbs_u8(&s, &version) || (version != TK_ENV_FORMAT_1 && version != TK_ENV_FORMAT_2)) {
    return parse_fail(out, why, "version");
  }
  out->format = version;
  if (!cbs_u16(&s, &hlen) || hlen != len) {
    return parse_fail(out, why, "header length does not match the input");
  }
  if (len < TK_ENV_HEADER_MIN || len > TK_ENV_HEADER_MAX) {
    return parse_fail(out, why, "header length out of range");
  }
  if (!cbs_u8(&s, &tlen) || tlen == 0 || tlen > KMS_TENANT_ID_MAX ||
      !cbs_string(&s, out->tenant, tlen)) {
    return parse_fail(out, why, "tenant");
  }
  if (!cbs_u32(&s, &out->kek_version)) {
    return parse_fail(out, why, "KEK version");
  }
  const uint8_t *wrapped;
  if (!cbs_u16(&s, &wlen) || wlen == 0 || wlen > KMS_WRAPPED_KEY_MAX ||
      !cbs_skip_get(&s, &wrapped, wlen)) {
    return parse_fail(out, why, "wrapped key");
  }
  memcpy(out->wrapped, wrapped, wlen);
  out->wrapped_len = wlen;
  if (!cbs_u8(&s, &n) || n > KMS_CONTEXT_MAX_ENTRIES) {
    return parse_fail(out, why, "context: entry count");
  }
  for (size_t i = 0; i < n; i++) {
    uint8_t kl;
    uint16_t vl;
    if (!cbs_u8(&s, &kl) || kl == 0 || kl > KMS_CONTEXT_KEY_MAX ||
        !cbs_string(&s, out->keys[i], kl)) {
      return parse_fail(out, why, "context: key");
    }
    if (!cbs_u16(&s, &vl) || vl > KMS_CONTEXT_VALUE_MAX ||
        !cbs_string(&s, out->values[i], vl)) {
      return parse_fail(out, why, "context: value");
    }
  }
  out->n_context = n;
  if (s.len != 0) {
    return parse_fail(out, why, "trailing bytes after the last context entry");
  }
  if (!header_fields_ok(out, &reason)) {
    return parse_fail(out, why, reason);
  }
  return KMS_OK;
}

int
tk_env_header_is_session(const struct tk_env_header *h, const char **out_session_id)
{
  *out_session_id = NULL;
  if (h->wrapped_len != TK_ENV_SESSION_MARKER_LEN ||
      memcmp(h->wrapped, TK_ENV_SESSION_MARKER, TK_ENV_SESSION_MARKER_LEN) != 0) {
    return 0;
  }
  for (size_t i = 0; i < h->n_context; i++) {
    if (strcmp(h->keys[i], TK_ENV_SESSION_KEY) == 0) {
      if (kms_wire_session_id_ok(h->values[i])) {
        *out_session_id = h->values[i];
      }
      break;
    }
  }
  return 1;
}

int
tk_env_body_context(uint8_t *out, size_t out_cap, size_t *out_len, const struct tk_env_header *h)
{
  const char *why = NULL;
  *out_len = 0;
  if (h->format == TK_ENV_FORMAT_1) {
    return tk_env_header_encode(out, out_cap, out_len, h); /* canonical: the header's bytes */
  }
  if (!header_fields_ok(h, &why)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Format 2: everything but H, the KEK version, W and the wrapped key. */
  struct cbb w = {out, out_cap, 0, 1};
  cbb_put(&w, TK_ENV_MAGIC, TK_ENV_MAGIC_LEN);
  cbb_u8(&w, h->format);
  put_tenant(&w, h);
  put_context(&w, h);
  if (!w.ok) {
    if (out_cap > 0) {
      memset(out, 0, w.len < out_cap ? w.len : out_cap);
    }
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_len = w.len;
  return KMS_OK;
}
