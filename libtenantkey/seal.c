/* Envelope operations: one-shot seal/open, streaming, and random access over a header + Cobblestone-256 body. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cobblestone.h"
#include "envelope.h"
#include "kms_err.h"
#include "tk_internal.h"

_Static_assert(TK_ENVELOPE_HEADER_MAX == TK_ENV_HEADER_MAX,
               "tenantkey.h and envelope.h disagree on the largest header");
_Static_assert(TK_STREAM_FINAL_MAX >= TK_ENV_HEADER_MAX + TK_COB_HEADER_LEN + TK_COB_CT_CHUNK_LEN - 1,
               "TK_STREAM_FINAL_MAX too small for a sealing final");
_Static_assert(TK_ENV_BODY_CONTEXT_MAX <= TK_COB_MAX_CONTEXT_LEN,
               "the body's context (format 1: the whole header) must fit Cobblestone's limit");

/*
 * Errors that say something is wrong with the envelope (rather than with the
 * caller, the connection or the service) all become one opaque TK_EDECRYPT:
 * kmsd's NOT_FOUND counts, because the tenant came from an unauthenticated
 * header (a flipped byte names another tenant).
 */
static int
opaque(int r)
{
  if (r == KMS_ERR_DECRYPT || r == KMS_ERR_TRUNCATED || r == KMS_ERR_NOT_FOUND ||
      r == KMS_ERR_INVALID_ARGUMENT) {
    return KMS_ERR_DECRYPT;
  }
  return r;
}

/* Asks kmsd for the data key named by a parsed header; checks the KEK version it reports. */
static int
unwrap_header_key(tk_client *client, tk_data_key **out_key, struct tk_env_header *h)
{
  tk_data_key *k = NULL;
  size_t klen = 0;
  const char *session_id = NULL;
  *out_key = NULL;
  if (tk_env_header_is_session(h, &session_id)) {
    /*
     * A session envelope: its key is fetched by name (GetSessionKey), so the
     * header's KEK version may be older (kmsd re-wraps after rotations) and a
     * shredded or unknown session is TK_ENOTFOUND, passed through: the key is
     * gone, not the envelope altered (a header naming another session fails
     * the key commitment instead). docs/ENVELOPE.md, "Session envelopes".
     */
    if (session_id == NULL) {
      return KMS_ERR_DECRYPT;
    }
    int r = tk_session_header_key(client, &k, h, session_id);
    if (r == KMS_ERR_INVALID_ARGUMENT) {
      return KMS_ERR_DECRYPT; /* our request passed our checks: kmsd refused the names */
    }
    if (r != KMS_OK) {
      return r;
    }
    if (tk_data_key_plaintext(k, &klen) == NULL || klen != TK_COB_KEY_LEN) {
      tk_data_key_free(k);
      return KMS_ERR_DECRYPT;
    }
    *out_key = k;
    return KMS_OK;
  }
  /* A clash between the client's attributes and this context is misuse, not a bad envelope. */
  if (tk_client_attributes_clash(client, h->ptrs, h->n_context)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  int r = tk_data_key_decrypt_entries(client, &k, h->tenant, h->ptrs, h->n_context,
                                      h->wrapped, h->wrapped_len);
  if (r != KMS_OK) {
    return opaque(r);
  }
  if (tk_data_key_kek_version(k) != h->kek_version ||
      tk_data_key_plaintext(k, &klen) == NULL || klen != TK_COB_KEY_LEN) {
    tk_data_key_free(k);
    return KMS_ERR_DECRYPT;
  }
  *out_key = k;
  return KMS_OK;
}

/*
 * body_context parses the header |hdr| (|hdr_len| bytes) into |h| and writes
 * the body's Cobblestone context to |out| (capacity TK_ENV_BODY_CONTEXT_MAX):
 * format 1, the header itself; format 2, the header without the fields a
 * rewrap changes (envelope.h). KMS_ERR_DECRYPT if the header is not one.
 */
static int
body_context(uint8_t *out, size_t *out_len, struct tk_env_header *h, const uint8_t *hdr,
             size_t hdr_len)
{
  *out_len = 0;
  if (tk_env_header_parse(h, hdr, hdr_len, NULL) != KMS_OK ||
      tk_env_body_context(out, TK_ENV_BODY_CONTEXT_MAX, out_len, h) != KMS_OK) {
    return KMS_ERR_DECRYPT;
  }
  return KMS_OK;
}

/* body_context_of is body_context for a header we just encoded ourselves. */
static int
body_context_of(uint8_t *out, size_t *out_len, const uint8_t *hdr, size_t hdr_len)
{
  struct tk_env_header *h = malloc(sizeof(*h));
  if (h == NULL) {
    *out_len = 0;
    return KMS_ERR_ALLOC;
  }
  int r = body_context(out, out_len, h, hdr, hdr_len);
  free(h);
  return r == KMS_OK ? KMS_OK : KMS_ERR_INTERNAL;
}

/* Generates a data key and the header (format |format|) for it. */
static int
new_key_and_header(tk_client *client, uint8_t format, tk_data_key **out_key, uint8_t *hdr,
                   size_t *hdr_len, const char *tenant_id, const tk_context *ctx)
{
  int r = KMS_ERR_INTERNAL;
  tk_data_key *k = NULL;
  struct tk_env_header *h = NULL;
  Tkms__ContextEntry **entries = NULL;
  size_t n = tk_context_entries(ctx, &entries);
  size_t wlen = 0, klen = 0;
  const uint8_t *w;

  *out_key = NULL;
  *hdr_len = 0;
  if (client == NULL || tenant_id == NULL || !kms_wire_tenant_id_ok(tenant_id) ||
      (format != TK_ENV_FORMAT_1 && format != TK_ENV_FORMAT_2)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  h = malloc(sizeof(*h));
  if (h == NULL) {
    return KMS_ERR_ALLOC;
  }
  r = tk_data_key_generate(client, &k, tenant_id, ctx, 1);
  if (r != KMS_OK) {
    goto out;
  }
  w = tk_data_key_wrapped(k, &wlen);
  if (tk_data_key_plaintext(k, &klen) == NULL || klen != TK_COB_KEY_LEN) {
    r = KMS_ERR_PROTOCOL;
    goto out;
  }
  r = tk_env_header_set(h, format, tenant_id, tk_data_key_kek_version(k), w, wlen, entries, n);
  if (r != KMS_OK) {
    r = KMS_ERR_PROTOCOL; /* kmsd's answer (version, wrapped key) broke a limit */
    goto out;
  }
  r = tk_env_header_encode(hdr, TK_ENV_HEADER_MAX, hdr_len, h);
  if (r != KMS_OK) {
    goto out;
  }
  *out_key = k;
  k = NULL;
out:
  tk_data_key_free(k);
  free(h);
  return r;
}

/*
 * key_and_header: a fresh data key from kmsd and a header of format
 * |format|, or (|session| not NULL) the session's key with a session
 * envelope header (always format 1: docs/ENVELOPE.md), without a round trip.
 * The body's context goes to |body_ctx| (capacity TK_ENV_BODY_CONTEXT_MAX).
 */
static int
key_and_header(tk_client *client, const tk_session *session, uint8_t format, tk_data_key **out_key,
               uint8_t *hdr, size_t *hdr_len, uint8_t *body_ctx, size_t *body_ctx_len,
               const char *tenant_id, const tk_context *ctx)
{
  int r;
  *body_ctx_len = 0;
  if (session != NULL) {
    r = tk_session_seal_header(session, ctx, out_key, hdr, hdr_len);
  } else {
    r = new_key_and_header(client, format, out_key, hdr, hdr_len, tenant_id, ctx);
  }
  if (r == KMS_OK) {
    r = body_context_of(body_ctx, body_ctx_len, hdr, *hdr_len);
  }
  if (r != KMS_OK) {
    tk_data_key_free(*out_key);
    *out_key = NULL;
    *hdr_len = 0;
  }
  return r;
}

/* ---- One-shot ------------------------------------------------------------- */

TK_EXPORT size_t
tk_seal_max_len(size_t pt_len)
{
  uint64_t ct = tk_cob_ciphertext_len(pt_len);
  if (ct == 0 || ct > SIZE_MAX - TK_ENV_HEADER_MAX) {
    return 0;
  }
  return (size_t)ct + TK_ENV_HEADER_MAX;
}

static int
seal_one(tk_client *client, const tk_session *session, uint8_t format, uint8_t *out, size_t out_cap,
         size_t *out_len, const char *tenant_id, const tk_context *ctx, const uint8_t *pt,
         size_t pt_len)
{
  int r = KMS_ERR_INTERNAL;
  tk_data_key *k = NULL;
  uint8_t hdr[TK_ENV_HEADER_MAX], body_ctx[TK_ENV_BODY_CONTEXT_MAX];
  size_t hdr_len = 0, ct_len = 0, klen = 0, body_ctx_len = 0;

  *out_len = 0;
  uint64_t body = tk_cob_ciphertext_len(pt_len);
  if (out == NULL || (pt == NULL && pt_len > 0) || body == 0 ||
      out_cap < TK_ENV_HEADER_MIN || out_cap - TK_ENV_HEADER_MIN < body) {
    return KMS_ERR_INVALID_ARGUMENT; /* refused before asking kmsd for a key */
  }
  r = key_and_header(client, session, format, &k, hdr, &hdr_len, body_ctx, &body_ctx_len, tenant_id,
                     ctx);
  if (r != KMS_OK) {
    goto out;
  }
  if (out_cap < hdr_len || out_cap - hdr_len < body) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  memcpy(out, hdr, hdr_len);
  const uint8_t *key = tk_data_key_plaintext(k, &klen);
  r = tk_cob_encrypt(out + hdr_len, out_cap - hdr_len, &ct_len, key, klen, body_ctx, body_ctx_len,
                     pt, pt_len);
  if (r != KMS_OK) {
    goto out;
  }
  *out_len = hdr_len + ct_len;
out:
  tk_data_key_free(k);
  return r;
}

TK_EXPORT int
tk_seal(tk_client *client, uint8_t *out, size_t out_cap, size_t *out_len, const char *tenant_id,
        const tk_context *ctx, const uint8_t *pt, size_t pt_len)
{
  return seal_one(client, NULL, TK_ENV_FORMAT_NEWEST, out, out_cap, out_len, tenant_id, ctx, pt,
                  pt_len);
}

int
tk_seal_format(tk_client *client, uint8_t format, uint8_t *out, size_t out_cap, size_t *out_len,
               const char *tenant_id, const tk_context *ctx, const uint8_t *pt, size_t pt_len)
{
  if (out_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_len = 0;
  if (format != TK_ENV_FORMAT_1 && format != TK_ENV_FORMAT_2) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return seal_one(client, NULL, format, out, out_cap, out_len, tenant_id, ctx, pt, pt_len);
}

TK_EXPORT int
tk_seal_session(const tk_session *session, uint8_t *out, size_t out_cap, size_t *out_len,
                const tk_context *ctx, const uint8_t *pt, size_t pt_len)
{
  if (out_len == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_len = 0;
  if (session == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return seal_one(NULL, session, TK_ENV_FORMAT_1, out, out_cap, out_len, NULL, ctx, pt, pt_len);
}

/* Parses the header at the start of a complete in-memory envelope. */
static int
parse_envelope(struct tk_env_header *h, size_t *out_hdr_len, const uint8_t *env, size_t env_len)
{
  size_t hl = 0;
  *out_hdr_len = 0;
  if (env == NULL || tk_env_header_peek_len(&hl, env, env_len) != KMS_OK || hl > env_len ||
      tk_env_header_parse(h, env, hl, NULL) != KMS_OK) {
    return KMS_ERR_DECRYPT;
  }
  *out_hdr_len = hl;
  return KMS_OK;
}

TK_EXPORT int
tk_envelope_plaintext_len(uint64_t *out_len, const uint8_t *env, size_t env_len)
{
  struct tk_env_header h;
  size_t hl = 0;
  *out_len = 0;
  if (parse_envelope(&h, &hl, env, env_len) != KMS_OK ||
      tk_cob_plaintext_len(out_len, env_len - hl) != KMS_OK) {
    *out_len = 0;
    return KMS_ERR_DECRYPT;
  }
  return KMS_OK;
}

_Static_assert(sizeof(((tk_envelope_meta *)0)->tenant) == KMS_TENANT_ID_MAX + 1,
               "tk_envelope_meta.tenant");
_Static_assert(sizeof(((tk_envelope_meta *)0)->context_keys) / sizeof(char[65]) ==
                   KMS_CONTEXT_MAX_ENTRIES,
               "tk_envelope_meta.context_keys");
_Static_assert(sizeof(((tk_envelope_meta *)0)->context_keys[0]) == KMS_CONTEXT_KEY_MAX + 1,
               "tk_envelope_meta.context_keys[]");
_Static_assert(sizeof(((tk_envelope_meta *)0)->context_values[0]) == KMS_CONTEXT_VALUE_MAX + 1,
               "tk_envelope_meta.context_values[]");

TK_EXPORT int
tk_envelope_info(tk_envelope_meta *out, const uint8_t *env, size_t env_len)
{
  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  if (env == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  size_t hl = 0;
  int r = tk_env_header_peek_len(&hl, env, env_len);
  if (r == KMS_ERR_TRUNCATED) {
    return KMS_ERR_TRUNCATED;
  }
  if (r != KMS_OK) {
    return KMS_ERR_DECRYPT;
  }
  if (hl > env_len) {
    return KMS_ERR_TRUNCATED;
  }
  struct tk_env_header *h = malloc(sizeof(*h));
  if (h == NULL) {
    return KMS_ERR_ALLOC;
  }
  if (tk_env_header_parse(h, env, hl, NULL) != KMS_OK) {
    free(h);
    return KMS_ERR_DECRYPT;
  }
  const char *sid = NULL;
  memcpy(out->tenant, h->tenant, sizeof(out->tenant));
  out->kek_version = h->kek_version;
  out->header_len = hl;
  out->is_session = tk_env_header_is_session(h, &sid);
  out->n_context = h->n_context;
  for (size_t i = 0; i < h->n_context; i++) {
    memcpy(out->context_keys[i], h->keys[i], sizeof(out->context_keys[i]));
    memcpy(out->context_values[i], h->values[i], sizeof(out->context_values[i]));
  }
  out->format = h->format;
  OPENSSL_cleanse(h, sizeof(*h));
  free(h);
  return KMS_OK;
}

/* ---- Rewrapping a format 2 header ----------------------------------------- */

/* context_from_header: the header's context entries as a tk_context (for ReEncrypt). */
static int
context_from_header(tk_context **out_ctx, const struct tk_env_header *h)
{
  tk_context *c = tk_context_new();
  *out_ctx = NULL;
  if (c == NULL) {
    return KMS_ERR_ALLOC;
  }
  for (size_t i = 0; i < h->n_context; i++) {
    int r = tk_context_add(c, h->keys[i], h->values[i]);
    if (r != KMS_OK) {
      tk_context_free(c);
      return r == KMS_ERR_ALLOC ? r : KMS_ERR_DECRYPT;
    }
  }
  *out_ctx = c;
  return KMS_OK;
}

TK_EXPORT int
tk_envelope_rewrap_header(tk_client *client, uint8_t *out_hdr, size_t out_cap, size_t *out_hdr_len,
                          uint32_t *out_kek_version, const uint8_t *env, size_t env_len,
                          uint32_t target_version)
{
  int r = KMS_ERR_INTERNAL;
  struct tk_env_header *h = NULL, *nh = NULL;
  tk_context *ctx = NULL;
  uint8_t nw[KMS_WRAPPED_KEY_MAX], old_ctx[TK_ENV_BODY_CONTEXT_MAX],
      new_ctx[TK_ENV_BODY_CONTEXT_MAX], enc[TK_ENV_HEADER_MAX];
  size_t hl = 0, nl = 0, old_ctx_len = 0, new_ctx_len = 0, enc_len = 0;
  uint32_t nv = 0;
  const char *session_id = NULL;

  if (out_hdr_len == NULL || out_kek_version == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_hdr_len = 0;
  *out_kek_version = 0;
  if (client == NULL || out_hdr == NULL || env == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = tk_env_header_peek_len(&hl, env, env_len);
  if (r == KMS_OK && hl > env_len) {
    r = KMS_ERR_TRUNCATED;
  }
  if (r != KMS_OK) {
    return r == KMS_ERR_TRUNCATED ? KMS_ERR_TRUNCATED : KMS_ERR_DECRYPT;
  }
  h = malloc(sizeof(*h));
  nh = malloc(sizeof(*nh));
  if (h == NULL || nh == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  r = body_context(old_ctx, &old_ctx_len, h, env, hl);
  if (r != KMS_OK) {
    goto out;
  }
  if (h->format != TK_ENV_FORMAT_2 || tk_env_header_is_session(h, &session_id)) {
    r = KMS_ERR_INVALID_ARGUMENT; /* format 1 binds the wrapped key into the body */
    goto out;
  }
  r = context_from_header(&ctx, h);
  if (r != KMS_OK) {
    goto out;
  }
  /* kmsd authenticates the wrapped key with AAD (tenant, KEK version, context) first. */
  r = tk_data_key_rewrap(client, nw, &nl, &nv, h->tenant, ctx, h->wrapped, h->wrapped_len,
                         target_version);
  if (r != KMS_OK) {
    goto out;
  }
  if (nv == 0 || (target_version != 0 && nv != target_version)) {
    r = KMS_ERR_PROTOCOL; /* kmsd answered another version than asked for */
    goto out;
  }
  r = tk_env_header_set(nh, TK_ENV_FORMAT_2, h->tenant, nv, nw, nl, h->ptrs, h->n_context);
  if (r == KMS_OK) {
    r = tk_env_header_encode(enc, sizeof(enc), &enc_len, nh);
  }
  if (r == KMS_OK) {
    r = tk_env_body_context(new_ctx, sizeof(new_ctx), &new_ctx_len, nh);
  }
  if (r != KMS_OK) {
    r = KMS_ERR_PROTOCOL; /* kmsd's wrapped key broke a limit of the header */
    goto out;
  }
  /* The point of format 2: the body's context did not change. */
  if (new_ctx_len != old_ctx_len || memcmp(new_ctx, old_ctx, old_ctx_len) != 0) {
    r = KMS_ERR_INTERNAL;
    goto out;
  }
  if (enc_len > out_cap) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  memcpy(out_hdr, enc, enc_len);
  *out_hdr_len = enc_len;
  *out_kek_version = nv;
  r = KMS_OK;
out:
  tk_context_free(ctx);
  free(h);
  free(nh);
  return r;
}

TK_EXPORT int
tk_open(tk_client *client, uint8_t *out, size_t out_cap, size_t *out_len, const uint8_t *env,
        size_t env_len)
{
  int r = KMS_ERR_INTERNAL;
  struct tk_env_header *h = NULL;
  tk_data_key *k = NULL;
  uint8_t body_ctx[TK_ENV_BODY_CONTEXT_MAX];
  size_t hl = 0, klen = 0, body_ctx_len = 0;
  uint64_t pt_len = 0;

  *out_len = 0;
  if (client == NULL || (out == NULL && out_cap > 0)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  h = malloc(sizeof(*h));
  if (h == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  /* Everything that can be checked without kmsd first: header, then length. */
  r = parse_envelope(h, &hl, env, env_len);
  if (r == KMS_OK && tk_env_body_context(body_ctx, sizeof(body_ctx), &body_ctx_len, h) != KMS_OK) {
    r = KMS_ERR_DECRYPT;
  }
  if (r != KMS_OK) {
    goto out;
  }
  if (tk_cob_plaintext_len(&pt_len, env_len - hl) != KMS_OK) {
    r = KMS_ERR_DECRYPT;
    goto out;
  }
  if (pt_len > out_cap) {
    r = KMS_ERR_INVALID_ARGUMENT;
    goto out;
  }
  r = unwrap_header_key(client, &k, h);
  if (r != KMS_OK) {
    goto out;
  }
  const uint8_t *key = tk_data_key_plaintext(k, &klen);
  r = tk_cob_decrypt(out, out_cap, out_len, key, klen, body_ctx, body_ctx_len, env + hl,
                     env_len - hl);
  r = opaque(r);
out:
  if (r != KMS_OK) {
    *out_len = 0;
    if (out != NULL && out_cap > 0) {
      OPENSSL_cleanse(out, out_cap);
    }
  }
  tk_data_key_free(k);
  free(h);
  return r;
}

/* ---- Streaming ------------------------------------------------------------ */

struct tk_stream {
  int sealing;
  int err;  /* sticky error, 0 while healthy */
  int done; /* final succeeded */
  tk_client *client;
  tk_cob_enc *enc;
  tk_cob_dec *dec;
  /* Sealing: header + Cobblestone header, not yet handed out. Opening: the header so far. */
  uint8_t buf[TK_ENV_HEADER_MAX + TK_COB_HEADER_LEN];
  size_t buf_len;
  size_t hdr_need; /* opening: declared header length, 0 until known */
};

TK_EXPORT size_t
tk_stream_update_max(size_t in_len)
{
  size_t enc = tk_cob_enc_update_max(in_len);
  size_t dec = tk_cob_dec_update_max(in_len);
  size_t fixed = TK_ENV_HEADER_MAX + TK_COB_HEADER_LEN;
  if (enc > SIZE_MAX - fixed) {
    return SIZE_MAX;
  }
  enc += fixed;
  return enc > dec ? enc : dec;
}

static int
stream_seal_new(tk_client *client, const tk_session *session, uint8_t format, tk_stream **out_st,
                const char *tenant_id, const tk_context *ctx)
{
  int r = KMS_ERR_INTERNAL;
  tk_data_key *k = NULL;
  tk_stream *st = NULL;
  uint8_t body_ctx[TK_ENV_BODY_CONTEXT_MAX];
  size_t hl = 0, klen = 0, body_ctx_len = 0;

  *out_st = NULL;
  st = calloc(1, sizeof(*st));
  if (st == NULL) {
    return KMS_ERR_ALLOC;
  }
  st->sealing = 1;
  st->client = client;
  r = key_and_header(client, session, format, &k, st->buf, &hl, body_ctx, &body_ctx_len, tenant_id,
                     ctx);
  if (r != KMS_OK) {
    goto out;
  }
  const uint8_t *key = tk_data_key_plaintext(k, &klen);
  r = tk_cob_enc_init(&st->enc, st->buf + hl, key, klen, NULL, body_ctx, body_ctx_len);
  if (r != KMS_OK) {
    goto out;
  }
  st->buf_len = hl + TK_COB_HEADER_LEN;
  *out_st = st;
  st = NULL;
out:
  tk_data_key_free(k);
  tk_stream_free(st);
  return r;
}

TK_EXPORT int
tk_stream_seal_new(tk_client *client, tk_stream **out_st, const char *tenant_id,
                   const tk_context *ctx)
{
  return stream_seal_new(client, NULL, TK_ENV_FORMAT_NEWEST, out_st, tenant_id, ctx);
}

int
tk_stream_seal_new_format(tk_client *client, uint8_t format, tk_stream **out_st,
                          const char *tenant_id, const tk_context *ctx)
{
  if (out_st == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_st = NULL;
  if (format != TK_ENV_FORMAT_1 && format != TK_ENV_FORMAT_2) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return stream_seal_new(client, NULL, format, out_st, tenant_id, ctx);
}

TK_EXPORT int
tk_stream_seal_session_new(tk_stream **out_st, const tk_session *session, const tk_context *ctx)
{
  if (out_st == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_st = NULL;
  if (session == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return stream_seal_new(NULL, session, TK_ENV_FORMAT_1, out_st, NULL, ctx);
}

TK_EXPORT int
tk_stream_open_new(tk_client *client, tk_stream **out_st)
{
  *out_st = NULL;
  if (client == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  tk_stream *st = calloc(1, sizeof(*st));
  if (st == NULL) {
    return KMS_ERR_ALLOC;
  }
  st->client = client;
  *out_st = st;
  return KMS_OK;
}

static int
stream_fail(tk_stream *st, int r)
{
  st->err = r;
  return r;
}

/* Moves pending sealing output (the headers) to |out|. */
static size_t
flush_pending(tk_stream *st, uint8_t *out)
{
  size_t n = st->buf_len;
  if (n > 0) {
    memcpy(out, st->buf, n);
    st->buf_len = 0;
  }
  return n;
}

/*
 * Opening: takes header bytes from |*in| until the header is complete, then
 * unwraps the data key and starts the Cobblestone decryptor.
 */
static int
take_header(tk_stream *st, const uint8_t **in, size_t *in_len)
{
  int r = KMS_ERR_INTERNAL;
  struct tk_env_header *h = NULL;
  tk_data_key *k = NULL;
  size_t klen = 0;

  if (st->hdr_need == 0) {
    size_t want = TK_ENV_PREFIX_LEN - st->buf_len;
    size_t n = *in_len < want ? *in_len : want;
    memcpy(st->buf + st->buf_len, *in, n);
    st->buf_len += n;
    *in += n;
    *in_len -= n;
    r = tk_env_header_peek_len(&st->hdr_need, st->buf, st->buf_len);
    if (r == KMS_ERR_TRUNCATED) {
      return KMS_OK; /* need more */
    }
    if (r != KMS_OK) {
      return KMS_ERR_DECRYPT;
    }
  }
  size_t want = st->hdr_need - st->buf_len;
  size_t n = *in_len < want ? *in_len : want;
  memcpy(st->buf + st->buf_len, *in, n);
  st->buf_len += n;
  *in += n;
  *in_len -= n;
  if (st->buf_len < st->hdr_need) {
    return KMS_OK;
  }
  h = malloc(sizeof(*h));
  if (h == NULL) {
    return KMS_ERR_ALLOC;
  }
  uint8_t body_ctx[TK_ENV_BODY_CONTEXT_MAX];
  size_t body_ctx_len = 0;
  r = body_context(body_ctx, &body_ctx_len, h, st->buf, st->buf_len);
  if (r != KMS_OK) {
    goto out;
  }
  r = unwrap_header_key(st->client, &k, h);
  if (r != KMS_OK) {
    goto out;
  }
  const uint8_t *key = tk_data_key_plaintext(k, &klen);
  r = tk_cob_dec_init(&st->dec, key, klen, body_ctx, body_ctx_len);
out:
  tk_data_key_free(k);
  free(h);
  return r;
}

TK_EXPORT int
tk_stream_update(tk_stream *st, uint8_t *out, size_t out_cap, size_t *out_len,
                 const uint8_t *in, size_t in_len)
{
  int r = KMS_ERR_INTERNAL;
  size_t n = 0, w = 0;

  *out_len = 0;
  if (st == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (st->err != 0) {
    return st->err;
  }
  if (st->done || out == NULL || (in == NULL && in_len > 0) ||
      out_cap < tk_stream_update_max(in_len)) {
    return KMS_ERR_INVALID_ARGUMENT; /* misuse: not sticky, nothing consumed */
  }
  if (st->sealing) {
    w = flush_pending(st, out);
    r = tk_cob_enc_update(st->enc, out + w, out_cap - w, &n, in, in_len);
    if (r != KMS_OK) {
      OPENSSL_cleanse(out, out_cap);
      return stream_fail(st, r);
    }
    *out_len = w + n;
    return KMS_OK;
  }
  if (st->dec == NULL) {
    r = take_header(st, &in, &in_len);
    if (r != KMS_OK) {
      return stream_fail(st, opaque(r));
    }
    if (st->dec == NULL) {
      return KMS_OK; /* the header is not complete yet: all input was taken */
    }
  }
  r = tk_cob_dec_update(st->dec, out, out_cap, &n, in, in_len);
  if (r != KMS_OK) {
    return stream_fail(st, r == KMS_ERR_TRUNCATED ? KMS_ERR_TRUNCATED : opaque(r));
  }
  *out_len = n;
  return KMS_OK;
}

TK_EXPORT int
tk_stream_final(tk_stream *st, uint8_t *out, size_t out_cap, size_t *out_len)
{
  int r = KMS_ERR_INTERNAL;
  size_t n = 0, w = 0;

  *out_len = 0;
  if (st == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (st->err != 0) {
    return st->err;
  }
  if (st->done || out == NULL || out_cap < TK_STREAM_FINAL_MAX) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (st->sealing) {
    w = flush_pending(st, out);
    r = tk_cob_enc_final(st->enc, out + w, out_cap - w, &n);
    if (r != KMS_OK) {
      OPENSSL_cleanse(out, out_cap);
      return stream_fail(st, r);
    }
    *out_len = w + n;
    st->done = 1;
    return KMS_OK;
  }
  if (st->dec == NULL) {
    return stream_fail(st, KMS_ERR_TRUNCATED); /* ended inside the header */
  }
  r = tk_cob_dec_final(st->dec, out, out_cap, &n);
  if (r != KMS_OK) {
    return stream_fail(st, r == KMS_ERR_TRUNCATED ? KMS_ERR_TRUNCATED : opaque(r));
  }
  *out_len = n;
  st->done = 1;
  return KMS_OK;
}

TK_EXPORT void
tk_stream_free(tk_stream *st)
{
  if (st == NULL) {
    return;
  }
  tk_cob_enc_free(st->enc);
  tk_cob_dec_free(st->dec);
  OPENSSL_cleanse(st, sizeof(*st));
  free(st);
}

/* ---- Random access -------------------------------------------------------- */

struct tk_reader {
  tk_cob_reader *cob;
  tk_read_fn read_fn;
  void *arg;
  uint64_t hdr_len;
  int owns_arg; /* tk_reader_open_fd: |arg| is our malloc'ed struct fd_src */
};

/* Maps the public read callback's result to one error code. */
static int
call_read(tk_read_fn fn, void *arg, uint64_t off, uint8_t *buf, size_t len)
{
  int r = fn(arg, off, buf, len);
  if (r == 0) {
    return KMS_OK;
  }
  return r < 0 && r >= KMS_ERR_MIN_ ? r : KMS_ERR_IO;
}

/* Cobblestone sees the body only: its offsets start after the header. */
static int
body_read(void *arg, uint64_t off, uint8_t *buf, size_t len)
{
  tk_reader *rd = arg;
  if (off > UINT64_MAX - rd->hdr_len) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return call_read(rd->read_fn, rd->arg, off + rd->hdr_len, buf, len);
}

TK_EXPORT int
tk_reader_open(tk_client *client, tk_reader **out_rd, tk_read_fn read_fn, void *arg,
               uint64_t env_len)
{
  int r = KMS_ERR_INTERNAL;
  tk_reader *rd = NULL;
  struct tk_env_header *h = NULL;
  tk_data_key *k = NULL;
  uint8_t hdr[TK_ENV_HEADER_MAX], body_ctx[TK_ENV_BODY_CONTEXT_MAX];
  size_t hl = 0, klen = 0, body_ctx_len = 0;

  *out_rd = NULL;
  if (client == NULL || read_fn == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  rd = calloc(1, sizeof(*rd));
  h = malloc(sizeof(*h));
  if (rd == NULL || h == NULL) {
    r = KMS_ERR_ALLOC;
    goto out;
  }
  rd->read_fn = read_fn;
  rd->arg = arg;
  if (env_len < TK_ENV_HEADER_MIN) {
    r = KMS_ERR_DECRYPT;
    goto out;
  }
  r = call_read(read_fn, arg, 0, hdr, TK_ENV_PREFIX_LEN);
  if (r != KMS_OK) {
    goto out;
  }
  if (tk_env_header_peek_len(&hl, hdr, TK_ENV_PREFIX_LEN) != KMS_OK || hl > env_len) {
    r = KMS_ERR_DECRYPT;
    goto out;
  }
  r = call_read(read_fn, arg, TK_ENV_PREFIX_LEN, hdr + TK_ENV_PREFIX_LEN, hl - TK_ENV_PREFIX_LEN);
  if (r != KMS_OK) {
    goto out;
  }
  r = body_context(body_ctx, &body_ctx_len, h, hdr, hl);
  if (r != KMS_OK) {
    goto out;
  }
  uint64_t pt_len = 0;
  if (tk_cob_plaintext_len(&pt_len, env_len - hl) != KMS_OK) {
    r = KMS_ERR_DECRYPT;
    goto out;
  }
  r = unwrap_header_key(client, &k, h);
  if (r != KMS_OK) {
    goto out;
  }
  rd->hdr_len = hl;
  const uint8_t *key = tk_data_key_plaintext(k, &klen);
  r = tk_cob_reader_open(&rd->cob, key, klen, body_ctx, body_ctx_len, body_read, rd, env_len - hl);
  if (r != KMS_OK) {
    r = opaque(r);
    goto out;
  }
  *out_rd = rd;
  rd = NULL;
out:
  tk_data_key_free(k);
  free(h);
  tk_reader_free(rd);
  return r;
}

struct fd_src {
  int fd;
};

static int
fd_read(void *arg, uint64_t off, uint8_t *buf, size_t len)
{
  const struct fd_src *src = arg;
  while (len > 0) {
    if (off > (uint64_t)INT64_MAX) {
      return KMS_ERR_IO;
    }
    ssize_t n = pread(src->fd, buf, len, (off_t)off);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return KMS_ERR_IO;
    }
    buf += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return 0;
}

TK_EXPORT int
tk_reader_open_fd(tk_client *client, tk_reader **out_rd, int fd)
{
  struct stat sb;
  *out_rd = NULL;
  if (fd < 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (fstat(fd, &sb) != 0 || sb.st_size < 0) {
    return KMS_ERR_IO;
  }
  struct fd_src *src = malloc(sizeof(*src)); /* must live as long as the reader */
  if (src == NULL) {
    return KMS_ERR_ALLOC;
  }
  src->fd = fd;
  tk_reader *rd = NULL;
  int r = tk_reader_open(client, &rd, fd_read, src, (uint64_t)sb.st_size);
  if (r != KMS_OK) {
    free(src);
    return r;
  }
  rd->owns_arg = 1;
  *out_rd = rd;
  return KMS_OK;
}

TK_EXPORT uint64_t
tk_reader_plaintext_len(const tk_reader *rd)
{
  return rd != NULL && rd->cob != NULL ? tk_cob_reader_plaintext_len(rd->cob) : 0;
}

TK_EXPORT int
tk_reader_read(tk_reader *rd, uint8_t *out, uint64_t offset, size_t len)
{
  if (rd == NULL || rd->cob == NULL || (out == NULL && len > 0)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  int r = tk_cob_reader_read(rd->cob, out, offset, len);
  if (r == KMS_ERR_DECRYPT || r == KMS_ERR_TRUNCATED) {
    r = KMS_ERR_DECRYPT;
  }
  if (r != KMS_OK && len > 0) {
    OPENSSL_cleanse(out, len);
  }
  return r;
}

TK_EXPORT void
tk_reader_free(tk_reader *rd)
{
  if (rd == NULL) {
    return;
  }
  tk_cob_reader_free(rd->cob);
  if (rd->owns_arg) {
    free(rd->arg);
  }
  free(rd);
}

struct mem_src {
  const uint8_t *p;
  size_t len;
};

static int
mem_read(void *arg, uint64_t off, uint8_t *buf, size_t len)
{
  const struct mem_src *m = arg;
  if (off > m->len || len > m->len - off) {
    return KMS_ERR_IO;
  }
  memcpy(buf, m->p + off, len);
  return 0;
}

TK_EXPORT int
tk_open_range(tk_client *client, uint8_t *out, const uint8_t *env, size_t env_len,
              uint64_t offset, size_t len)
{
  struct mem_src m = {env, env_len};
  tk_reader *rd = NULL;
  if (out == NULL && len > 0) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  int r = env == NULL ? KMS_ERR_DECRYPT : tk_reader_open(client, &rd, mem_read, &m, env_len);
  if (r == KMS_OK) {
    r = tk_reader_read(rd, out, offset, len);
  }
  if (r != KMS_OK && len > 0) {
    OPENSSL_cleanse(out, len);
  }
  tk_reader_free(rd);
  return r;
}
