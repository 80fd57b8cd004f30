/* Tests for the envelope header (envelope.c), formats 1 and 2: golden vectors from tests/vectors, the body's context, and a parser that refuses every crafted defect. */
#include <check.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cobblestone.h"
#include "envelope.h"
#include "kms_err.h"

/* ---- helpers ---------------------------------------------------------------- */

static uint8_t *
unhex(const char *hex, size_t *out_len)
{
  size_t n = strlen(hex);
  ck_assert_msg(n % 2 == 0, "odd hex length");
  uint8_t *b = malloc(n / 2 + 1);
  ck_assert_ptr_nonnull(b);
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v;
    ck_assert_int_eq(sscanf(hex + 2 * i, "%2x", &v), 1);
    b[i] = (uint8_t)v;
  }
  *out_len = n / 2;
  return b;
}

/* load_vectors reads tests/vectors/envelope_v<format>.json. */
static json_t *
load_vectors(int format)
{
  char path[1024];
  const char *src = getenv("SRCDIR");
  snprintf(path, sizeof(path), "%s/tests/vectors/envelope_v%d.json", src != NULL ? src : ".",
           format);
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr);
  ck_assert_msg(root != NULL, "%s: %s", path, jerr.text);
  return root;
}

/* A raw header writer with no validation, to craft defects. */
struct raw {
  uint8_t b[TK_ENV_HEADER_MAX + 512];
  size_t n;
};

static void
raw_put(struct raw *r, const void *p, size_t n)
{
  ck_assert_uint_le(r->n + n, sizeof(r->b));
  memcpy(r->b + r->n, p, n);
  r->n += n;
}

static void
raw_u8(struct raw *r, unsigned v)
{
  uint8_t b = (uint8_t)v;
  raw_put(r, &b, 1);
}

static void
raw_u16(struct raw *r, unsigned v)
{
  uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
  raw_put(r, b, 2);
}

static void
raw_u32(struct raw *r, uint32_t v)
{
  uint8_t b[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  raw_put(r, b, 4);
}

/* The format version raw_start writes (the loop tests run each case for formats 1 and 2). */
static unsigned raw_format = 1;

/* Starts a header: magic, version, placeholder length. */
static void
raw_start(struct raw *r)
{
  r->n = 0;
  raw_put(r, "TKE", 3);
  raw_u8(r, raw_format);
  raw_u16(r, 0);
}

/* Sets the declared length to the bytes written so far. */
static void
raw_seal(struct raw *r)
{
  r->b[4] = (uint8_t)(r->n >> 8);
  r->b[5] = (uint8_t)r->n;
}

static void
raw_tenant_version_wrapped(struct raw *r, const char *tenant, uint32_t v, size_t wlen)
{
  raw_u8(r, (unsigned)strlen(tenant));
  raw_put(r, tenant, strlen(tenant));
  raw_u32(r, v);
  raw_u16(r, (unsigned)wlen);
  for (size_t i = 0; i < wlen; i++) {
    raw_u8(r, (unsigned)i);
  }
}

static void
raw_entry(struct raw *r, const char *k, const char *v)
{
  raw_u8(r, (unsigned)strlen(k));
  raw_put(r, k, strlen(k));
  raw_u16(r, (unsigned)strlen(v));
  raw_put(r, v, strlen(v));
}

static int
parses(const uint8_t *p, size_t n)
{
  struct tk_env_header h;
  return tk_env_header_parse(&h, p, n, NULL) == KMS_OK;
}

/* two_entries fills |e| with the context entries k0=v0 and k1=v1 (strings not copied). */
static void
two_entries(Tkms__ContextEntry e[2], char *k0, char *v0, char *k1, char *v1)
{
  tkms__context_entry__init(&e[0]);
  tkms__context_entry__init(&e[1]);
  e[0].key = k0;
  e[0].value = v0;
  e[1].key = k1;
  e[1].value = v1;
}

/* A valid header with two entries (the acme example). */
static void
good_header(struct raw *r)
{
  raw_start(r);
  raw_tenant_version_wrapped(r, "acme", 7, 65);
  raw_u8(r, 2);
  raw_entry(r, "purpose", "report");
  raw_entry(r, "session_id", "s-1");
  raw_seal(r);
}

/* ---- golden vectors ------------------------------------------------------------ */

/*
 * check_vectors checks every vector of one format's file: encoding, parsing,
 * the body's context, decryption, and re-encryption byte for byte.
 */
static void
check_vectors(int format)
{
  json_t *root = load_vectors(format);
  json_t *vecs = json_object_get(root, "vectors");
  ck_assert(json_is_array(vecs));
  ck_assert_uint_ge(json_array_size(vecs), 4);
  size_t i;
  json_t *v;
  json_array_foreach(vecs, i, v)
  {
    const char *name = json_string_value(json_object_get(v, "name"));
    size_t hl, el, wl, kl, sl, pl;
    uint8_t *hdr = unhex(json_string_value(json_object_get(v, "header")), &hl);
    uint8_t *env = unhex(json_string_value(json_object_get(v, "envelope")), &el);
    uint8_t *wrapped = unhex(json_string_value(json_object_get(v, "wrapped_key")), &wl);
    uint8_t *key = unhex(json_string_value(json_object_get(v, "data_key")), &kl);
    uint8_t *salt = unhex(json_string_value(json_object_get(v, "salt")), &sl);
    uint8_t *pt = unhex(json_string_value(json_object_get(v, "plaintext")), &pl);
    const char *tenant = json_string_value(json_object_get(v, "tenant"));
    uint32_t kv = (uint32_t)json_integer_value(json_object_get(v, "kek_version"));
    json_t *ctx = json_object_get(v, "context");
    ck_assert_uint_eq(hl, (size_t)json_integer_value(json_object_get(v, "header_len")));
    ck_assert_uint_eq(kl, 32);
    ck_assert_uint_eq(sl, TK_COB_SALT_LEN);
    ck_assert_msg(el > hl && memcmp(env, hdr, hl) == 0, "%s: envelope starts with header", name);

    /* 1. Encoding the fields (context in the order given) gives the header bytes. */
    Tkms__ContextEntry e[KMS_CONTEXT_MAX_ENTRIES], *ep[KMS_CONTEXT_MAX_ENTRIES];
    size_t n = json_array_size(ctx);
    for (size_t j = 0; j < n; j++) {
      tkms__context_entry__init(&e[j]);
      e[j].key = (char *)json_string_value(json_object_get(json_array_get(ctx, j), "key"));
      e[j].value = (char *)json_string_value(json_object_get(json_array_get(ctx, j), "value"));
      ep[j] = &e[j];
    }
    struct tk_env_header h, p;
    uint8_t enc[TK_ENV_HEADER_MAX];
    size_t encl = 0, peek = 0;
    ck_assert_uint_eq(hdr[3], (unsigned)format);
    ck_assert_int_eq(tk_env_header_set(&h, (uint8_t)format, tenant, kv, wrapped, wl, ep, n),
                     KMS_OK);
    ck_assert_int_eq(tk_env_header_encode(enc, sizeof(enc), &encl, &h), KMS_OK);
    ck_assert_msg(encl == hl && memcmp(enc, hdr, hl) == 0, "%s: encoding differs", name);

    /* 2. Parsing gives the fields back, context sorted; re-encoding is the identity. */
    ck_assert_int_eq(tk_env_header_peek_len(&peek, env, el), KMS_OK);
    ck_assert_uint_eq(peek, hl);
    ck_assert_int_eq(tk_env_header_parse(&p, hdr, hl, NULL), KMS_OK);
    ck_assert_uint_eq(p.format, (unsigned)format);
    ck_assert_str_eq(p.tenant, tenant);
    ck_assert_uint_eq(p.kek_version, kv);
    ck_assert_uint_eq(p.wrapped_len, wl);
    ck_assert_mem_eq(p.wrapped, wrapped, wl);
    ck_assert_uint_eq(p.n_context, n);
    for (size_t j = 0; j < n; j++) {
      int found = 0;
      for (size_t k = 0; k < n; k++) {
        found += strcmp(p.keys[k], e[j].key) == 0 && strcmp(p.values[k], e[j].value) == 0;
      }
      ck_assert_int_eq(found, 1);
      if (j > 0) {
        ck_assert_int_lt(strcmp(p.keys[j - 1], p.keys[j]), 0);
      }
    }
    ck_assert_int_eq(tk_env_header_encode(enc, sizeof(enc), &encl, &p), KMS_OK);
    ck_assert_msg(encl == hl && memcmp(enc, hdr, hl) == 0, "%s: parse-serialise", name);

    /*
     * 3. The body's context: format 1, the header; format 2, the header without H, KEK
     * version, W and wrapped key (and the file gives it).
     */
    uint8_t bctx[TK_ENV_BODY_CONTEXT_MAX];
    size_t bl = 0;
    ck_assert_int_eq(tk_env_body_context(bctx, sizeof(bctx), &bl, &p), KMS_OK);
    if (format == 1) {
      ck_assert_uint_eq(bl, hl);
      ck_assert_mem_eq(bctx, hdr, hl);
      ck_assert_ptr_null(json_object_get(v, "body_context"));
    } else {
      size_t jl = 0;
      uint8_t *jc = unhex(json_string_value(json_object_get(v, "body_context")), &jl);
      ck_assert_uint_eq(bl, jl);
      ck_assert_mem_eq(bctx, jc, jl);
      ck_assert_uint_eq(bl, hl - 2 - 4 - 2 - wl);
      free(jc);
    }

    /* 4. The body decrypts under the data key with that context. */
    uint8_t *out = malloc(el);
    size_t ol = 0;
    ck_assert_int_eq(tk_cob_decrypt(out, el, &ol, key, 32, bctx, bl, env + hl, el - hl), KMS_OK);
    ck_assert_uint_eq(ol, pl);
    ck_assert(pl == 0 || memcmp(out, pt, pl) == 0);
    /* ... and not with any other context (another envelope's), nor format 2 with the header. */
    bctx[bl - 1] ^= 1;
    ck_assert_int_eq(tk_cob_decrypt(out, el, &ol, key, 32, bctx, bl, env + hl, el - hl),
                     KMS_ERR_DECRYPT);
    bctx[bl - 1] ^= 1;
    if (format == 2) {
      ck_assert_int_eq(tk_cob_decrypt(out, el, &ol, key, 32, hdr, hl, env + hl, el - hl),
                       KMS_ERR_DECRYPT);
    }

    /* 5. Re-encrypting with the vector's salt reproduces the envelope. */
    uint8_t *again = malloc(el);
    memcpy(again, enc, hl);
    ck_assert_int_eq(
        tk_cob_encrypt_with_salt(again + hl, el - hl, &ol, key, 32, salt, bctx, bl, pt, pl),
        KMS_OK);
    ck_assert_uint_eq(hl + ol, el);
    ck_assert_msg(memcmp(again, env, el) == 0, "%s: re-encryption differs", name);
    free(again);
    free(out);
    free(hdr);
    free(env);
    free(wrapped);
    free(key);
    free(salt);
    free(pt);
  }
  json_decref(root);
}

START_TEST(test_golden_vectors_v1_parse_decrypt_and_reencrypt_byte_for_byte)
{
  check_vectors(1);
}
END_TEST

START_TEST(test_golden_vectors_v2_parse_decrypt_and_reencrypt_byte_for_byte)
{
  check_vectors(2);
}
END_TEST

/* Body bytes of vector |i| of |root| (malloc), and its header length. */
static uint8_t *
vector_envelope(json_t *root, size_t i, size_t *out_len, size_t *out_hl)
{
  json_t *v = json_array_get(json_object_get(root, "vectors"), i);
  ck_assert_ptr_nonnull(v);
  *out_hl = (size_t)json_integer_value(json_object_get(v, "header_len"));
  return unhex(json_string_value(json_object_get(v, "envelope")), out_len);
}

/* Vector 5 of format 2 is vector 2 rewrapped: another header (KEK, wrapped key), the same body. */
START_TEST(test_v2_vector_rewrapped_in_place_has_the_same_body)
{
  json_t *root = load_vectors(2);
  size_t l2, h2, l5, h5;
  uint8_t *e2 = vector_envelope(root, 1, &l2, &h2);
  uint8_t *e5 = vector_envelope(root, 4, &l5, &h5);
  ck_assert_uint_eq(h2, h5);
  ck_assert_uint_eq(l2, l5);
  ck_assert(memcmp(e2, e5, h2) != 0);
  ck_assert_mem_eq(e2 + h2, e5 + h5, l2 - h2);
  struct tk_env_header a, b;
  ck_assert_int_eq(tk_env_header_parse(&a, e2, h2, NULL), KMS_OK);
  ck_assert_int_eq(tk_env_header_parse(&b, e5, h5, NULL), KMS_OK);
  ck_assert_uint_eq(a.kek_version, 7);
  ck_assert_uint_eq(b.kek_version, 8);
  free(e2);
  free(e5);
  json_decref(root);
}
END_TEST

START_TEST(test_invalid_vector_headers_are_refused)
{
  json_t *root = load_vectors(_i);
  json_t *bad = json_object_get(root, "invalid_headers");
  ck_assert_uint_ge(json_array_size(bad), 10);
  size_t i;
  json_t *v;
  json_array_foreach(bad, i, v)
  {
    size_t n;
    uint8_t *b = unhex(json_string_value(json_object_get(v, "header")), &n);
    ck_assert_msg(!parses(b, n), "%s parses", json_string_value(json_object_get(v, "name")));
    free(b);
  }
  json_decref(root);
}
END_TEST

/* ---- crafted inputs ---------------------------------------------------------------- */

START_TEST(test_every_truncation_length_is_refused)
{
  raw_format = (unsigned)_i;
  struct raw r;
  good_header(&r);
  ck_assert(parses(r.b, r.n));
  for (size_t n = 0; n < r.n; n++) {
    /* As cut off (declared length > bytes) ... */
    ck_assert_msg(!parses(r.b, n), "cut at %zu parses", n);
    /* ... and with the declared length lowered to match, so each field's own length overruns. */
    if (n >= TK_ENV_PREFIX_LEN) {
      struct raw t = r;
      t.n = n;
      raw_seal(&t);
      ck_assert_msg(!parses(t.b, t.n), "re-declared cut at %zu parses", n);
    }
  }
  /* The prefix reader: short but consistent prefixes ask for more, wrong ones are refused. */
  size_t hl = 99;
  for (size_t n = 0; n < TK_ENV_PREFIX_LEN; n++) {
    ck_assert_int_eq(tk_env_header_peek_len(&hl, r.b, n), KMS_ERR_TRUNCATED);
    ck_assert_uint_eq(hl, 0);
  }
  ck_assert_int_eq(tk_env_header_peek_len(&hl, (const uint8_t *)"TKX", 3), KMS_ERR_DECRYPT);
  ck_assert_int_eq(tk_env_header_peek_len(&hl, (const uint8_t *)"TKE\x03", 4), KMS_ERR_DECRYPT);
  ck_assert_int_eq(tk_env_header_peek_len(&hl, (const uint8_t *)"TKE\x00", 4), KMS_ERR_DECRYPT);
  ck_assert_int_eq(tk_env_header_peek_len(&hl, (const uint8_t *)"TKE\x01", 4), KMS_ERR_TRUNCATED);
  ck_assert_int_eq(tk_env_header_peek_len(&hl, (const uint8_t *)"TKE\x02", 4), KMS_ERR_TRUNCATED);
  ck_assert_int_eq(tk_env_header_peek_len(&hl, r.b, r.n), KMS_OK);
  ck_assert_uint_eq(hl, r.n);
}
END_TEST

START_TEST(test_oversized_and_zero_lengths_are_refused)
{
  raw_format = (unsigned)_i;
  struct raw r;
  char t65[66], k65[66], v257[258], k64[65], v256[257];
  memset(t65, 't', 65);
  t65[65] = 0;
  memset(k65, 'k', 65);
  k65[65] = 0;
  memset(v257, 'v', 257);
  v257[257] = 0;
  memset(k64, 'k', 64);
  k64[64] = 0;
  memset(v256, 'v', 256);
  v256[256] = 0;

  /* Limits themselves are fine. */
  raw_start(&r);
  raw_tenant_version_wrapped(&r, t65 + 1, 1, 256);
  raw_u8(&r, 1);
  raw_entry(&r, k64, v256);
  raw_seal(&r);
  ck_assert(parses(r.b, r.n));

  raw_start(&r); /* tenant 65 */
  raw_tenant_version_wrapped(&r, t65, 1, 65);
  raw_u8(&r, 0);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r); /* tenant 0 */
  raw_tenant_version_wrapped(&r, "", 1, 65);
  raw_u8(&r, 0);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r); /* wrapped 257 (bytes present) */
  raw_tenant_version_wrapped(&r, "acme", 1, 257);
  raw_u8(&r, 0);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r); /* wrapped 0 */
  raw_tenant_version_wrapped(&r, "acme", 1, 0);
  raw_u8(&r, 0);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r); /* wrapped length 0xffff */
  raw_u8(&r, 4);
  raw_put(&r, "acme", 4);
  raw_u32(&r, 1);
  raw_u16(&r, 0xffff);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r); /* KEK version 0 */
  raw_tenant_version_wrapped(&r, "acme", 0, 65);
  raw_u8(&r, 0);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r); /* key 65 */
  raw_tenant_version_wrapped(&r, "acme", 1, 65);
  raw_u8(&r, 1);
  raw_entry(&r, k65, "x");
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r); /* key 0 */
  raw_tenant_version_wrapped(&r, "acme", 1, 65);
  raw_u8(&r, 1);
  raw_entry(&r, "", "x");
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r); /* value 257 */
  raw_tenant_version_wrapped(&r, "acme", 1, 65);
  raw_u8(&r, 1);
  raw_entry(&r, "k", v257);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r); /* 17 entries, all present */
  raw_tenant_version_wrapped(&r, "acme", 1, 65);
  raw_u8(&r, 17);
  for (int i = 0; i < 17; i++) {
    char k[8];
    snprintf(k, sizeof(k), "k%02d", i);
    raw_entry(&r, k, "v");
  }
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  /* A declared header length over the maximum, or under the minimum. */
  good_header(&r);
  r.b[4] = 0xff;
  r.b[5] = 0xff;
  size_t hl;
  ck_assert_int_eq(tk_env_header_peek_len(&hl, r.b, r.n), KMS_ERR_DECRYPT);
  ck_assert(!parses(r.b, r.n));
  r.b[4] = 0;
  r.b[5] = TK_ENV_HEADER_MIN - 1;
  ck_assert_int_eq(tk_env_header_peek_len(&hl, r.b, r.n), KMS_ERR_DECRYPT);
}
END_TEST

START_TEST(test_non_canonical_order_and_duplicates_are_refused)
{
  raw_format = (unsigned)_i;
  struct raw r;
  raw_start(&r);
  raw_tenant_version_wrapped(&r, "acme", 7, 65);
  raw_u8(&r, 2);
  raw_entry(&r, "session_id", "s-1");
  raw_entry(&r, "purpose", "report");
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r);
  raw_tenant_version_wrapped(&r, "acme", 7, 65);
  raw_u8(&r, 2);
  raw_entry(&r, "purpose", "report");
  raw_entry(&r, "purpose", "report");
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  /* A prefix sorts first ("a" < "ab"): the reverse is refused. */
  raw_start(&r);
  raw_tenant_version_wrapped(&r, "acme", 7, 65);
  raw_u8(&r, 2);
  raw_entry(&r, "ab", "1");
  raw_entry(&r, "a", "2");
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r);
  raw_tenant_version_wrapped(&r, "acme", 7, 65);
  raw_u8(&r, 2);
  raw_entry(&r, "a", "2");
  raw_entry(&r, "ab", "1");
  raw_seal(&r);
  ck_assert(parses(r.b, r.n));
  /* The encoder sorts whatever order it is given. */
  Tkms__ContextEntry e[2], *ep[2] = {&e[0], &e[1]};
  two_entries(e, "ab", "1", "a", "2");
  uint8_t w[65] = {0};
  for (size_t i = 0; i < 65; i++) {
    w[i] = (uint8_t)i;
  }
  struct tk_env_header h;
  uint8_t enc[TK_ENV_HEADER_MAX];
  size_t n;
  ck_assert_int_eq(tk_env_header_set(&h, (uint8_t)raw_format, "acme", 7, w, 65, ep, 2), KMS_OK);
  ck_assert_int_eq(tk_env_header_encode(enc, sizeof(enc), &n, &h), KMS_OK);
  ck_assert_uint_eq(n, r.n);
  ck_assert_mem_eq(enc, r.b, n);
  /* Duplicates can't even be encoded. */
  e[1].key = "ab";
  ck_assert_int_eq(tk_env_header_set(&h, (uint8_t)raw_format, "acme", 7, w, 65, ep, 2),
                   KMS_ERR_INVALID_ARGUMENT);
}
END_TEST

START_TEST(test_trailing_bytes_are_refused)
{
  raw_format = (unsigned)_i;
  struct raw r;
  good_header(&r);
  size_t n = r.n;
  /* Extra bytes beyond the declared length. */
  raw_u8(&r, 0);
  ck_assert(!parses(r.b, r.n));
  /* Extra bytes inside the declared length, after the last entry. */
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  /* An envelope's header is only its declared bytes: the body is not part of it. */
  ck_assert(parses(r.b, n) == 0); /* declared length now says n + 1 */
}
END_TEST

START_TEST(test_nul_and_control_characters_are_refused)
{
  raw_format = (unsigned)_i;
  struct raw r;
  raw_start(&r);
  raw_u8(&r, 4);
  raw_put(&r, "ac\0e", 4);
  raw_u32(&r, 1);
  raw_u16(&r, 1);
  raw_u8(&r, 1);
  raw_u8(&r, 0);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r);
  raw_tenant_version_wrapped(&r, "acme", 1, 65);
  raw_u8(&r, 1);
  raw_u8(&r, 1);
  raw_put(&r, "k", 1);
  raw_u16(&r, 3);
  raw_put(&r, "a\0b", 3);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r);
  raw_tenant_version_wrapped(&r, "acme", 1, 65);
  raw_u8(&r, 1);
  raw_entry(&r, "k", "line\nbreak");
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  raw_start(&r);
  raw_tenant_version_wrapped(&r, "-acme", 1, 65); /* must start with a letter or digit */
  raw_u8(&r, 0);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
}
END_TEST

/* Every one-byte change either fails or is itself canonical (parse -> serialise is the identity). */
START_TEST(test_every_byte_change_fails_or_reencodes_identically)
{
  raw_format = (unsigned)_i;
  struct raw r;
  good_header(&r);
  static const uint8_t deltas[] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff};
  size_t accepted = 0;
  for (size_t i = 0; i < r.n; i++) {
    for (size_t d = 0; d < sizeof(deltas); d++) {
      struct raw t = r;
      t.b[i] ^= deltas[d];
      struct tk_env_header h;
      if (tk_env_header_parse(&h, t.b, t.n, NULL) != KMS_OK) {
        continue;
      }
      accepted++;
      uint8_t enc[TK_ENV_HEADER_MAX];
      size_t n = 0;
      ck_assert_int_eq(tk_env_header_encode(enc, sizeof(enc), &n, &h), KMS_OK);
      ck_assert_uint_eq(n, t.n);
      ck_assert_msg(memcmp(enc, t.b, n) == 0, "byte %zu ^ %02x: accepted but not canonical", i,
                    deltas[d]);
    }
  }
  ck_assert_uint_gt(accepted, 0); /* e.g. wrapped-key bytes: opaque to the parser */
}
END_TEST

START_TEST(test_encoder_refuses_what_the_parser_would)
{
  raw_format = (unsigned)_i;
  uint8_t w[300] = {1};
  struct tk_env_header h;
  uint8_t f = (uint8_t)raw_format;
  ck_assert_int_eq(tk_env_header_set(&h, f, "acme", 0, w, 65, NULL, 0), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_env_header_set(&h, f, "a/b", 1, w, 65, NULL, 0), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_env_header_set(&h, f, "acme", 1, w, 0, NULL, 0), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_env_header_set(&h, f, "acme", 1, w, 257, NULL, 0), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_env_header_set(&h, 0, "acme", 1, w, 65, NULL, 0), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_env_header_set(&h, 3, "acme", 1, w, 65, NULL, 0), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_env_header_set(&h, f, "acme", 1, w, 65, NULL, 0), KMS_OK);
  uint8_t small[20];
  size_t n = 1;
  ck_assert_int_eq(tk_env_header_encode(small, sizeof(small), &n, &h), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(n, 0);
}
END_TEST

/* ---- format 2: the body's context ------------------------------------------------ */

/* The context of a format 2 body, byte for byte: "TKE" 02 | T, tenant | N | entries. */
START_TEST(test_format2_body_context_is_the_header_without_length_kek_version_and_wrapped_key)
{
  struct raw r, want;
  raw_format = 2;
  good_header(&r);
  struct tk_env_header h;
  ck_assert_int_eq(tk_env_header_parse(&h, r.b, r.n, NULL), KMS_OK);
  ck_assert_uint_eq(h.format, 2);
  want.n = 0;
  raw_put(&want, "TKE\x02", 4);
  raw_u8(&want, 4);
  raw_put(&want, "acme", 4);
  raw_u8(&want, 2);
  raw_entry(&want, "purpose", "report");
  raw_entry(&want, "session_id", "s-1");
  uint8_t c[TK_ENV_BODY_CONTEXT_MAX];
  size_t cl = 0;
  ck_assert_int_eq(tk_env_body_context(c, sizeof(c), &cl, &h), KMS_OK);
  ck_assert_uint_eq(cl, want.n);
  ck_assert_mem_eq(c, want.b, cl);
  ck_assert_uint_eq(cl, r.n - 2 - 4 - 2 - 65);
  /* Format 1: the whole header. */
  raw_format = 1;
  good_header(&r);
  ck_assert_int_eq(tk_env_header_parse(&h, r.b, r.n, NULL), KMS_OK);
  ck_assert_int_eq(tk_env_body_context(c, sizeof(c), &cl, &h), KMS_OK);
  ck_assert_uint_eq(cl, r.n);
  ck_assert_mem_eq(c, r.b, cl);
  /* Too small an output: refused, nothing left behind. */
  raw_format = 2;
  good_header(&r);
  ck_assert_int_eq(tk_env_header_parse(&h, r.b, r.n, NULL), KMS_OK);
  ck_assert_int_eq(tk_env_body_context(c, 10, &cl, &h), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(cl, 0);
}
END_TEST

/* context_equals: does the format |f| header of these fields have the body context |base|? */
static int
context_equals(const uint8_t *base, size_t bl, uint8_t f, const char *tenant, uint32_t kv,
               const uint8_t *w, size_t wl, Tkms__ContextEntry **ep, size_t n)
{
  struct tk_env_header h;
  uint8_t c[TK_ENV_BODY_CONTEXT_MAX];
  size_t cl = 0;
  ck_assert_int_eq(tk_env_header_set(&h, f, tenant, kv, w, wl, ep, n), KMS_OK);
  ck_assert_int_eq(tk_env_body_context(c, sizeof(c), &cl, &h), KMS_OK);
  return cl == bl && memcmp(c, base, bl) == 0;
}

/* Only KEK version and wrapped key (even its length) leave the context; all else is in it. */
START_TEST(test_format2_body_context_changes_with_tenant_and_context_only)
{
  Tkms__ContextEntry e[2], *ep[2] = {&e[0], &e[1]};
  two_entries(e, "purpose", "report", "session_id", "s-1");
  uint8_t w1[65], w2[200];
  memset(w1, 0x11, sizeof(w1));
  memset(w2, 0x22, sizeof(w2));
  struct tk_env_header h;
  uint8_t base[TK_ENV_BODY_CONTEXT_MAX];
  size_t bl = 0;
  ck_assert_int_eq(tk_env_header_set(&h, 2, "acme", 7, w1, 65, ep, 2), KMS_OK);
  ck_assert_int_eq(tk_env_body_context(base, sizeof(base), &bl, &h), KMS_OK);
  ck_assert(context_equals(base, bl, 2, "acme", 7, w1, 65, ep, 2));
  ck_assert(context_equals(base, bl, 2, "acme", 8, w2, 200, ep, 2));
  /* Another tenant, another value, one entry fewer, format 1: another context. */
  ck_assert(!context_equals(base, bl, 2, "acmf", 7, w1, 65, ep, 2));
  ck_assert(!context_equals(base, bl, 2, "acme", 7, w1, 65, ep, 1));
  ck_assert(!context_equals(base, bl, 1, "acme", 7, w1, 65, ep, 2));
  e[1].value = "s-2";
  ck_assert(!context_equals(base, bl, 2, "acme", 7, w1, 65, ep, 2));
}
END_TEST

/*
 * Every one-byte change of a whole format 2 envelope (vector 2: header and body) either
 * breaks the header, or breaks the body under the vector's data key, or lies in the KEK
 * version or wrapped key: those are authenticated by kmsd (GCM with tenant, KEK version
 * and context as AAD), and a wrapped key that unwraps to another data key fails the key
 * commitment (tests/integration/test_library.c checks both with a real kmsd).
 */
START_TEST(test_every_byte_change_of_a_v2_envelope_fails_or_is_in_kek_version_or_wrapped_key)
{
  json_t *root = load_vectors(2);
  json_t *v = json_array_get(json_object_get(root, "vectors"), 1);
  size_t el, hl, kl;
  uint8_t *env = vector_envelope(root, 1, &el, &hl);
  uint8_t *key = unhex(json_string_value(json_object_get(v, "data_key")), &kl);
  /* acme: KEK version at 11..14, W at 15..16, wrapped key at 17..81. */
  const size_t kv_off = 7 + 4, w_off = kv_off + 4 + 2, w_end = w_off + 65;
  uint8_t *out = malloc(el);
  size_t in_header_fields = 0;
  for (size_t i = 0; i < el; i++) {
    env[i] ^= 0x01;
    struct tk_env_header h;
    uint8_t c[TK_ENV_BODY_CONTEXT_MAX];
    size_t cl = 0, ol = 0, peek = 0;
    int hdr_ok = tk_env_header_peek_len(&peek, env, el) == KMS_OK && peek == hl &&
                 tk_env_header_parse(&h, env, hl, NULL) == KMS_OK;
    if (hdr_ok) {
      ck_assert_int_eq(tk_env_body_context(c, sizeof(c), &cl, &h), KMS_OK);
      int body_ok = tk_cob_decrypt(out, el, &ol, key, 32, c, cl, env + hl, el - hl) == KMS_OK;
      if (body_ok) {
        ck_assert_msg((i >= kv_off && i < kv_off + 4) || (i >= w_off && i < w_end),
                      "byte %zu: changed envelope still opens under the data key", i);
        in_header_fields++;
      }
    }
    env[i] ^= 0x01;
  }
  ck_assert_uint_eq(in_header_fields, 4 + 65);
  free(out);
  free(key);
  free(env);
  json_decref(root);
}
END_TEST

START_TEST(test_session_marker_is_refused_in_format_2)
{
  struct tk_env_header h;
  const uint8_t *m = (const uint8_t *)TK_ENV_SESSION_MARKER;
  ck_assert_int_eq(tk_env_header_set(&h, 1, "acme", 1, m, TK_ENV_SESSION_MARKER_LEN, NULL, 0),
                   KMS_OK);
  ck_assert_int_eq(tk_env_header_set(&h, 2, "acme", 1, m, TK_ENV_SESSION_MARKER_LEN, NULL, 0),
                   KMS_ERR_INVALID_ARGUMENT);
  struct raw r;
  raw_format = 2;
  raw_start(&r);
  raw_u8(&r, 4);
  raw_put(&r, "acme", 4);
  raw_u32(&r, 1);
  raw_u16(&r, TK_ENV_SESSION_MARKER_LEN);
  raw_put(&r, m, TK_ENV_SESSION_MARKER_LEN);
  raw_u8(&r, 0);
  raw_seal(&r);
  ck_assert(!parses(r.b, r.n));
  r.b[3] = 1;
  ck_assert(parses(r.b, r.n));
}
END_TEST

static Suite *
envelope_suite(void)
{
  Suite *s = suite_create("envelope");
  TCase *tc = tcase_create("header");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_golden_vectors_v1_parse_decrypt_and_reencrypt_byte_for_byte);
  tcase_add_test(tc, test_golden_vectors_v2_parse_decrypt_and_reencrypt_byte_for_byte);
  tcase_add_test(tc, test_v2_vector_rewrapped_in_place_has_the_same_body);
  /* Loop tests: _i is the format version, 1 and 2. */
  tcase_add_loop_test(tc, test_invalid_vector_headers_are_refused, 1, 3);
  tcase_add_loop_test(tc, test_every_truncation_length_is_refused, 1, 3);
  tcase_add_loop_test(tc, test_oversized_and_zero_lengths_are_refused, 1, 3);
  tcase_add_loop_test(tc, test_non_canonical_order_and_duplicates_are_refused, 1, 3);
  tcase_add_loop_test(tc, test_trailing_bytes_are_refused, 1, 3);
  tcase_add_loop_test(tc, test_nul_and_control_characters_are_refused, 1, 3);
  tcase_add_loop_test(tc, test_every_byte_change_fails_or_reencodes_identically, 1, 3);
  tcase_add_loop_test(tc, test_encoder_refuses_what_the_parser_would, 1, 3);
  tcase_add_test(
      tc, test_format2_body_context_is_the_header_without_length_kek_version_and_wrapped_key);
  tcase_add_test(tc, test_format2_body_context_changes_with_tenant_and_context_only);
  tcase_add_test(tc,
                 test_every_byte_change_of_a_v2_envelope_fails_or_is_in_kek_version_or_wrapped_key);
  tcase_add_test(tc, test_session_marker_is_refused_in_format_2);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  SRunner *sr = srunner_create(envelope_suite());
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
