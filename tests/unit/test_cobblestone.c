/* Tests for Cobblestone-256 (cobblestone.c): every Wycheproof vector on every path, plus behaviour tests. */
#include <check.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "cobblestone.h"
#include "kms_err.h"

/* ---- helpers ---- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

static uint8_t *unhex(const char *hex, size_t *out_len) {
  size_t n = strlen(hex);
  uint8_t *b;

  ck_assert_msg(n % 2 == 0, "odd hex length");
  b = malloc(n / 2 + 1);
  ck_assert_ptr_nonnull(b);
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    ck_assert_msg(hi >= 0 && lo >= 0, "bad hex");
    b[i] = (uint8_t)(hi << 4 | lo);
  }
  *out_len = n / 2;
  return b;
}

/* inflate_all decompresses a zlib stream into a new buffer. */
static uint8_t *inflate_all(const uint8_t *in, size_t in_len, size_t *out_len) {
  z_stream zs;
  size_t cap = 1 << 16, len = 0;
  uint8_t *out = malloc(cap);
  int zr;

  ck_assert_ptr_nonnull(out);
  memset(&zs, 0, sizeof(zs));
  ck_assert_int_eq(inflateInit(&zs), Z_OK);
  zs.next_in = (Bytef *)in;
  zs.avail_in = (uInt)in_len;
  do {
    if (len == cap) {
      cap *= 2;
      out = realloc(out, cap);
      ck_assert_ptr_nonnull(out);
    }
    zs.next_out = out + len;
    zs.avail_out = (uInt)(cap - len);
    zr = inflate(&zs, Z_NO_FLUSH);
    ck_assert_msg(zr == Z_OK || zr == Z_STREAM_END, "inflate: %d", zr);
    len = cap - zs.avail_out;
  } while (zr != Z_STREAM_END);
  inflateEnd(&zs);
  *out_len = len;
  return out;
}

static int all_zero(const uint8_t *b, size_t n) {
  uint8_t acc = 0;
  for (size_t i = 0; i < n; i++) {
    acc |= b[i];
  }
  return acc == 0;
}

/* A tiny deterministic PRNG for piece sizes and test data. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void fill(uint8_t *b, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; i++) {
    b[i] = (uint8_t)(i * 31 + (i >> 8) + seed);
  }
}

/* In-memory tk_cob_read_fn. */
struct membuf {
  const uint8_t *p;
  size_t len;
  int fail_at_call; /* 0: never */
  int calls;
};

static int mem_read(void *arg, uint64_t off, uint8_t *buf, size_t len) {
  struct membuf *m = arg;
  m->calls++;
  if (m->fail_at_call != 0 && m->calls >= m->fail_at_call) {
    return KMS_ERR_IO;
  }
  if (off > m->len || len > m->len - off) {
    return 1;
  }
  memcpy(buf, m->p + off, len);
  return 0;
}

static const uint8_t k_key[32] = "0123456789abcdef0123456789abcdef";

/* ---- stream helpers ---- */

/* Piece-size patterns for the streaming decryptor. */
static const size_t pat_odd[] = {1, 7, 16383, 16400, 16401, 55, 2, 32801, 3};
static const size_t pat_whole[] = {SIZE_MAX};
static const size_t pat_header[] = {56, 16400, 16400, 16399};

/*
 * stream_decrypt feeds |ct| in pieces following |pat|; returns the first
 * error (or KMS_OK) and the plaintext released so far in |*out| / |*out_len|.
 * After an error, checks that further calls keep failing with it.
 */
static int stream_decrypt(const uint8_t *key, size_t key_len,
                          const uint8_t *ctx, size_t ctx_len,
                          const uint8_t *ct, size_t ct_len, const size_t *pat,
                          size_t npat, uint8_t **out, size_t *out_len) {
  tk_cob_dec *st = NULL;
  size_t off = 0, o = 0, cap = ct_len + TK_COB_CHUNK_LEN, n, k = 0;
  uint8_t *pt = calloc(1, cap);
  int r;

  ck_assert_ptr_nonnull(pt);
  *out = pt;
  *out_len = 0;
  if ((r = tk_cob_dec_init(&st, key, key_len, ctx, ctx_len)) != KMS_OK) {
    ck_assert_ptr_null(st);
    return r;
  }
  while (off < ct_len) {
    size_t piece = pat[k++ % npat];
    if (piece > ct_len - off) {
      piece = ct_len - off;
    }
    ck_assert_uint_ge(cap - o, tk_cob_dec_update_max(piece));
    r = tk_cob_dec_update(st, pt + o, cap - o, &n, ct + off, piece);
    if (r != KMS_OK) {
      ck_assert_uint_eq(n, 0);
      goto fail;
    }
    ck_assert_uint_le(n, tk_cob_dec_update_max(piece));
    ck_assert_uint_eq(n % TK_COB_CHUNK_LEN, 0);
    o += n;
    off += piece;
  }
  r = tk_cob_dec_final(st, pt + o, cap - o, &n);
  if (r != KMS_OK) {
    ck_assert_uint_eq(n, 0);
    goto fail;
  }
  o += n;
  *out_len = o;
  /* Finished: further use is misuse. */
  ck_assert_int_eq(tk_cob_dec_update(st, pt + o, cap - o, &n, ct, 1),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_dec_final(st, pt + o, cap - o, &n),
                   KMS_ERR_INVALID_ARGUMENT);
  tk_cob_dec_free(st);
  return KMS_OK;
fail:
  *out_len = o;
  /* Sticky: the error never turns into a clean end of message. */
  {
    uint8_t more[TK_COB_CT_CHUNK_LEN * 2] = {0};
    uint8_t sink[TK_COB_CHUNK_LEN * 3];
    ck_assert_int_eq(tk_cob_dec_update(st, sink, sizeof(sink), &n, more,
                                       sizeof(more)),
                     r);
    ck_assert_int_eq(tk_cob_dec_final(st, sink, sizeof(sink), &n), r);
    ck_assert_int_eq(tk_cob_dec_final(st, sink, sizeof(sink), &n), r);
  }
  tk_cob_dec_free(st);
  return r;
}

/* stream_encrypt encrypts |pt| with |salt| in random-size pieces. */
static uint8_t *stream_encrypt(const uint8_t *key, const uint8_t *salt,
                               const uint8_t *ctx, size_t ctx_len,
                               const uint8_t *pt, size_t pt_len,
                               size_t *out_len) {
  tk_cob_enc *st = NULL;
  size_t cap = (size_t)tk_cob_ciphertext_len(pt_len), o = 0, off = 0, n;
  uint8_t *ct = malloc(cap);

  ck_assert_ptr_nonnull(ct);
  ck_assert_int_eq(tk_cob_enc_init(&st, ct, key, 32, salt, ctx, ctx_len),
                   KMS_OK);
  o = TK_COB_HEADER_LEN;
  while (off < pt_len) {
    size_t piece = (size_t)(rng() % 40000);
    if (rng() % 4 == 0) {
      piece = TK_COB_CHUNK_LEN;
    }
    if (piece > pt_len - off) {
      piece = pt_len - off;
    }
    ck_assert_uint_ge(cap - o, tk_cob_enc_update_max(piece) > cap - o
                                   ? 0
                                   : tk_cob_enc_update_max(piece));
    ck_assert_int_eq(tk_cob_enc_update(st, ct + o, cap - o, &n, pt + off,
                                       piece),
                     KMS_OK);
    ck_assert_uint_le(n, tk_cob_enc_update_max(piece));
    o += n;
    off += piece;
  }
  ck_assert_int_eq(tk_cob_enc_final(st, ct + o, cap - o, &n), KMS_OK);
  o += n;
  ck_assert_uint_eq(o, cap);
  tk_cob_enc_free(st);
  *out_len = o;
  return ct;
}

/* ---- Wycheproof ---- */

static json_t *load_vectors(const char *name) {
  const char *srcdir = getenv("SRCDIR");
  char path[4096];
  json_error_t jerr;
  json_t *root;

  snprintf(path, sizeof(path), "%s/../shared/testvectors/wycheproof/%s",
           srcdir != NULL ? srcdir : ".", name);
  root = json_load_file(path, 0, &jerr);
  ck_assert_msg(root != NULL, "cannot load %s: %s", path, jerr.text);
  return root;
}

static int has_flag(json_t *t, const char *flag) {
  size_t i;
  json_t *f;
  json_array_foreach(json_object_get(t, "flags"), i, f) {
    if (strcmp(json_string_value(f), flag) == 0) {
      return 1;
    }
  }
  return 0;
}

static int sha_matches(const uint8_t *m, size_t n, const char *hex) {
  uint8_t d[64];
  size_t dl;
  uint8_t *want = unhex(hex, &dl);
  int ok;
  SHA512(m, n, d);
  ok = dl == 64 && memcmp(d, want, 64) == 0;
  free(want);
  return ok;
}

START_TEST(test_wycheproof_cobblestone) {
  json_t *root = load_vectors("c2sp_chunked_encryption_aes_256_gcm_test.json");
  json_t *g, *t;
  size_t gi, ti;
  long total = 0, valid_n = 0, invalid_n = 0, mismatches = 0;
  long reads_checked = 0, stream_runs = 0, enc_checked = 0;
  long expected = json_integer_value(json_object_get(root, "numberOfTests"));

  json_array_foreach(json_object_get(root, "testGroups"), gi, g) {
    ck_assert_str_eq(json_string_value(json_object_get(g, "aead")),
                     "AEAD_AES_256_GCM");
    ck_assert_str_eq(json_string_value(json_object_get(g, "sha")), "SHA-512");
    json_array_foreach(json_object_get(g, "tests"), ti, t) {
      long tc = json_integer_value(json_object_get(t, "tcId"));
      int valid = strcmp(json_string_value(json_object_get(t, "result")),
                         "valid") == 0;
      size_t key_len, ctx_len, zct_len, ct_len, pt_len = 0;
      uint8_t *key = unhex(json_string_value(json_object_get(t, "key")),
                           &key_len);
      uint8_t *ctx = unhex(json_string_value(json_object_get(t, "ctx")),
                           &ctx_len);
      uint8_t *zct = unhex(json_string_value(json_object_get(t, "ct")),
                           &zct_len);
      uint8_t *ct = inflate_all(zct, zct_len, &ct_len);
      json_t *jlen = json_object_get(t, "msgLength");
      const char *sha = json_string_value(json_object_get(t, "msgSha512"));
      size_t msg_len = jlen != NULL ? (size_t)json_integer_value(jlen) : 0;
      uint8_t *pt = calloc(1, ct_len + 1);
      int r, ok = 1;
      struct membuf mb = {ct, ct_len, 0, 0};

      ck_assert_ptr_nonnull(pt);
      total++;
      valid ? valid_n++ : invalid_n++;

      /* (a) one-shot. */
      r = tk_cob_decrypt(pt, ct_len + 1, &pt_len, key, key_len, ctx, ctx_len,
                         ct, ct_len);
      if (valid) {
        ok &= r == KMS_OK && pt_len == msg_len &&
              sha_matches(pt, pt_len, sha);
      } else {
        ok &= r != KMS_OK && pt_len == 0 && all_zero(pt, ct_len + 1);
        if (has_flag(t, "InvalidKeySize")) {
          ok &= r == KMS_ERR_INVALID_ARGUMENT;
        } else if (has_flag(t, "HeaderFailure") &&
                   !has_flag(t, "Truncation")) {
          ok &= r == KMS_ERR_DECRYPT;
        }
      }
      if (!ok) {
        fprintf(stderr, "tcId %ld: one-shot r=%d\n", tc, r);
      }

      /* (b) streaming, in several piece patterns. */
      {
        const size_t *pats[] = {pat_odd, pat_whole, pat_header};
        size_t npats[] = {sizeof(pat_odd) / sizeof(pat_odd[0]), 1,
                          sizeof(pat_header) / sizeof(pat_header[0])};
        for (int p = 0; p < 3; p++) {
          uint8_t *spt;
          size_t spt_len;
          int sr = stream_decrypt(key, key_len, ctx, ctx_len, ct, ct_len,
                                  pats[p], npats[p], &spt, &spt_len);
          int sok;
          stream_runs++;
          if (valid) {
            sok = sr == KMS_OK && spt_len == msg_len &&
                  memcmp(spt, pt, msg_len) == 0;
          } else {
            /* May release at most the valid prefix, never more. */
            sok = sr != KMS_OK && spt_len <= msg_len &&
                  (spt_len == 0 || spt_len < msg_len ||
                   sha_matches(spt, spt_len, sha));
            if (has_flag(t, "HeaderFailure")) {
              sok &= spt_len == 0;
            }
          }
          if (!sok) {
            fprintf(stderr, "tcId %ld: stream pattern %d r=%d len=%zu\n", tc,
                    p, sr, spt_len);
          }
          ok &= sok;
          free(spt);
        }
      }

      /* (c) random access. */
      {
        tk_cob_reader *rd = NULL;
        r = tk_cob_reader_open(&rd, key, key_len, ctx, ctx_len, mem_read, &mb,
                               ct_len);
        if (valid) {
          uint64_t ranges[][2] = {{0, msg_len},         {0, 0},
                                  {0, 1},               {1, 100},
                                  {16383, 2},           {16384, 16384},
                                  {100, 40000},         {msg_len, 0},
                                  {msg_len / 2, msg_len / 3},
                                  {msg_len > 0 ? msg_len - 1 : 0,
                                   msg_len > 0 ? 1 : 0},
                                  {rng() % (msg_len + 1), 0},
                                  {msg_len > 5 ? msg_len - 5 : 0, 5}};
          ok &= r == KMS_OK && tk_cob_reader_plaintext_len(rd) == msg_len;
          for (size_t i = 0; r == KMS_OK && i < sizeof(ranges) / sizeof(ranges[0]);
               i++) {
            uint64_t off = ranges[i][0], len = ranges[i][1];
            uint8_t *buf;
            if (off > msg_len || len > msg_len - off) {
              continue;
            }
            buf = malloc(len + 1);
            ck_assert_ptr_nonnull(buf);
            ok &= tk_cob_reader_read(rd, buf, off, len) == KMS_OK &&
                  memcmp(buf, pt + off, len) == 0;
            ok &= tk_cob_read_at(buf, key, key_len, ctx, ctx_len, mem_read,
                                 &mb, ct_len, off, len) == KMS_OK &&
                  memcmp(buf, pt + off, len) == 0;
            reads_checked++;
            free(buf);
          }
          /* Out of range is misuse. */
          ok &= tk_cob_reader_read(rd, pt, msg_len, 1) ==
                KMS_ERR_INVALID_ARGUMENT;
        } else {
          /* Opening authenticates the length: fails except ValidFinalChunk;
           * reading the whole message must fail in every case. */
          if (!has_flag(t, "ValidFinalChunk")) {
            ok &= r != KMS_OK && rd == NULL;
          }
          if (r == KMS_OK) {
            uint64_t n = tk_cob_reader_plaintext_len(rd);
            uint8_t *buf = malloc(n + 1);
            ck_assert_ptr_nonnull(buf);
            ok &= tk_cob_reader_read(rd, buf, 0, n) == KMS_ERR_DECRYPT &&
                  all_zero(buf, n);
            ok &= tk_cob_read_at(buf, key, key_len, ctx, ctx_len, mem_read,
                                 &mb, ct_len, 0, n) == KMS_ERR_DECRYPT &&
                  all_zero(buf, n);
            free(buf);
          }
        }
        if (!ok) {
          fprintf(stderr, "tcId %ld: random access r=%d\n", tc, r);
        }
        tk_cob_reader_free(rd);
      }

      /* (d) re-encryption with the vector's salt reproduces ct exactly. */
      if (valid) {
        size_t n = 0;
        uint8_t *re = malloc(ct_len);
        uint8_t *sct;
        size_t sct_len;
        ck_assert_ptr_nonnull(re);
        ok &= tk_cob_ciphertext_len(msg_len) == ct_len;
        ok &= tk_cob_encrypt_with_salt(re, ct_len, &n, key, key_len, ct, ctx,
                                       ctx_len, pt, msg_len) == KMS_OK &&
              n == ct_len && memcmp(re, ct, ct_len) == 0;
        sct = stream_encrypt(key, ct, ctx, ctx_len, pt, msg_len, &sct_len);
        ok &= sct_len == ct_len && memcmp(sct, ct, ct_len) == 0;
        enc_checked++;
        free(sct);
        free(re);
      }

      if (!ok) {
        mismatches++;
        fprintf(stderr, "tcId %ld (%s) FAILED\n", tc,
                json_string_value(json_object_get(t, "comment")));
      }
      free(key);
      free(ctx);
      free(zct);
      free(ct);
      free(pt);
    }
  }
  fprintf(stderr,
          "c2sp_chunked_encryption_aes_256_gcm_test.json: %ld vectors "
          "(%ld valid, %ld invalid) on one-shot, %ld streaming runs, "
          "%ld random-access reads, %ld re-encryptions (one-shot + "
          "streaming): %ld mismatches\n",
          total, valid_n, invalid_n, stream_runs, reads_checked, enc_checked,
          mismatches);
  ck_assert_int_eq(total, expected);
  ck_assert_int_gt(valid_n, 0);
  ck_assert_int_gt(invalid_n, 0);
  ck_assert_int_eq(enc_checked, valid_n);
  ck_assert_int_eq(mismatches, 0);
  json_decref(root);
}
END_TEST

/* ---- behaviour ---- */

/* encrypt_new encrypts |pt_len| bytes of test data with a random salt. */
static uint8_t *encrypt_new(size_t pt_len, const char *ctx, uint8_t **out_pt,
                            size_t *out_ct_len) {
  uint8_t *pt = malloc(pt_len + 1);
  size_t cap = (size_t)tk_cob_ciphertext_len(pt_len);
  uint8_t *ct = malloc(cap);
  size_t n;

  ck_assert_ptr_nonnull(pt);
  ck_assert_ptr_nonnull(ct);
  fill(pt, pt_len, (uint8_t)pt_len);
  ck_assert_int_eq(tk_cob_encrypt(ct, cap, &n, k_key, 32,
                                  (const uint8_t *)ctx, strlen(ctx), pt,
                                  pt_len),
                   KMS_OK);
  ck_assert_uint_eq(n, cap);
  *out_pt = pt;
  *out_ct_len = n;
  return ct;
}

/* expect_fail checks that every decryption path fails on |ct|. */
static void expect_fail(const uint8_t *ct, size_t ct_len, const char *ctx,
                        int want_oneshot, int want_stream) {
  uint8_t *pt = calloc(1, ct_len + 1), *spt;
  size_t n = 1, spt_len;
  struct membuf mb = {ct, ct_len, 0, 0};
  tk_cob_reader *rd = NULL;
  int r;

  ck_assert_ptr_nonnull(pt);
  r = tk_cob_decrypt(pt, ct_len + 1, &n, k_key, 32, (const uint8_t *)ctx,
                     strlen(ctx), ct, ct_len);
  if (want_oneshot == 0) {
    ck_assert(r == KMS_ERR_DECRYPT || r == KMS_ERR_TRUNCATED);
  } else {
    ck_assert_int_eq(r, want_oneshot);
  }
  ck_assert_uint_eq(n, 0);
  ck_assert(all_zero(pt, ct_len + 1));
  r = stream_decrypt(k_key, 32, (const uint8_t *)ctx, strlen(ctx), ct, ct_len,
                     pat_odd, sizeof(pat_odd) / sizeof(pat_odd[0]), &spt,
                     &spt_len);
  if (want_stream == 0) {
    ck_assert(r == KMS_ERR_DECRYPT || r == KMS_ERR_TRUNCATED);
  } else {
    ck_assert_int_eq(r, want_stream);
  }
  free(spt);
  r = tk_cob_reader_open(&rd, k_key, 32, (const uint8_t *)ctx, strlen(ctx),
                         mem_read, &mb, ct_len);
  if (r == KMS_OK) {
    /* Only possible when the final chunk is intact: the whole read fails. */
    uint64_t len = tk_cob_reader_plaintext_len(rd);
    uint8_t *buf = malloc(len + 1);
    ck_assert_int_eq(tk_cob_reader_read(rd, buf, 0, len), KMS_ERR_DECRYPT);
    free(buf);
  }
  tk_cob_reader_free(rd);
  free(pt);
}

START_TEST(test_truncation_at_chunk_boundary) {
  uint8_t *pt, *ct;
  size_t ct_len;
  uint64_t l;

  ct = encrypt_new(40000, "", &pt, &ct_len); /* chunks: 16384, 16384, 7232 */
  /* Cut after one or two full chunks, or right after the header. */
  expect_fail(ct, TK_COB_HEADER_LEN + TK_COB_CT_CHUNK_LEN, "",
              KMS_ERR_TRUNCATED, KMS_ERR_TRUNCATED);
  expect_fail(ct, TK_COB_HEADER_LEN + 2 * TK_COB_CT_CHUNK_LEN, "",
              KMS_ERR_TRUNCATED, KMS_ERR_TRUNCATED);
  expect_fail(ct, TK_COB_HEADER_LEN, "", KMS_ERR_TRUNCATED, KMS_ERR_TRUNCATED);
  /* Final chunk shorter than a tag. */
  expect_fail(ct, TK_COB_HEADER_LEN + TK_COB_CT_CHUNK_LEN + 15, "",
              KMS_ERR_TRUNCATED, KMS_ERR_TRUNCATED);
  /* Cut inside the final chunk: a valid length, but the tag fails. */
  expect_fail(ct, ct_len - 1, "", KMS_ERR_DECRYPT, KMS_ERR_DECRYPT);
  expect_fail(ct, 10, "", KMS_ERR_TRUNCATED, KMS_ERR_TRUNCATED);
  expect_fail(ct, 0, "", KMS_ERR_TRUNCATED, KMS_ERR_TRUNCATED);
  /* The length arithmetic itself. */
  ck_assert_int_eq(tk_cob_plaintext_len(&l, 71), KMS_ERR_TRUNCATED);
  ck_assert_int_eq(tk_cob_plaintext_len(&l, 72), KMS_OK);
  ck_assert_uint_eq(l, 0);
  ck_assert_int_eq(tk_cob_plaintext_len(&l, 56 + 16400), KMS_ERR_TRUNCATED);
  ck_assert_int_eq(tk_cob_plaintext_len(&l, 56 + 16400 + 15),
                   KMS_ERR_TRUNCATED);
  ck_assert_int_eq(tk_cob_plaintext_len(&l, 56 + 16400 + 16), KMS_OK);
  ck_assert_uint_eq(l, 16384);
  ck_assert_int_eq(tk_cob_plaintext_len(&l, ct_len), KMS_OK);
  ck_assert_uint_eq(l, 40000);
  ck_assert_uint_eq(tk_cob_ciphertext_len(0), 72);
  ck_assert_uint_eq(tk_cob_ciphertext_len(16383), 56 + 16399);
  ck_assert_uint_eq(tk_cob_ciphertext_len(16384), 56 + 16400 + 16);
  ck_assert_uint_eq(tk_cob_ciphertext_len(TK_COB_MAX_PT_LEN + 1), 0);
  ck_assert_uint_ne(tk_cob_ciphertext_len(TK_COB_MAX_PT_LEN), 0);
  ck_assert_int_eq(tk_cob_plaintext_len(&l, tk_cob_ciphertext_len(
                                                TK_COB_MAX_PT_LEN)),
                   KMS_OK);
  ck_assert_uint_eq(l, TK_COB_MAX_PT_LEN);
  ck_assert_int_eq(tk_cob_plaintext_len(&l, tk_cob_ciphertext_len(
                                                TK_COB_MAX_PT_LEN) + 17),
                   KMS_ERR_INVALID_ARGUMENT);
  free(pt);
  free(ct);
}
END_TEST

START_TEST(test_chunk_swap_fails) {
  uint8_t *pt, *ct, tmp[TK_COB_CT_CHUNK_LEN];
  size_t ct_len;
  uint8_t *c0, *c1;

  ct = encrypt_new(40000, "swap", &pt, &ct_len);
  c0 = ct + TK_COB_HEADER_LEN;
  c1 = c0 + TK_COB_CT_CHUNK_LEN;
  memcpy(tmp, c0, sizeof(tmp));
  memcpy(c0, c1, sizeof(tmp));
  memcpy(c1, tmp, sizeof(tmp));
  expect_fail(ct, ct_len, "swap", KMS_ERR_DECRYPT, KMS_ERR_DECRYPT);
  /* Chunk 0 duplicated over chunk 1. */
  memcpy(c0, c1, sizeof(tmp));
  expect_fail(ct, ct_len, "swap", KMS_ERR_DECRYPT, KMS_ERR_DECRYPT);
  free(pt);
  free(ct);
}
END_TEST

START_TEST(test_trailing_data_fails) {
  uint8_t *pt, *ct, *big;
  size_t ct_len;
  size_t extra[] = {1, 12, 20, 16384, 16400, 16400 - 7232 - 16,
                    16400 - 7232 - 16 + 1, 40000};

  ct = encrypt_new(40000, "", &pt, &ct_len); /* final chunk 7232 + 16 */
  for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
    uint8_t *p, *spt;
    size_t spt_len, n = 1;
    int r, sr;
    big = malloc(ct_len + extra[i]);
    memcpy(big, ct, ct_len);
    fill(big + ct_len, extra[i], 7);
    p = calloc(1, ct_len + extra[i]);
    r = tk_cob_decrypt(p, ct_len + extra[i], &n, k_key, 32, NULL, 0, big,
                       ct_len + extra[i]);
    ck_assert_int_ne(r, KMS_OK);
    ck_assert(r == KMS_ERR_DECRYPT || r == KMS_ERR_TRUNCATED);
    ck_assert(all_zero(p, ct_len + extra[i]));
    sr = stream_decrypt(k_key, 32, NULL, 0, big, ct_len + extra[i], pat_odd,
                        sizeof(pat_odd) / sizeof(pat_odd[0]), &spt, &spt_len);
    /* The one-shot can refuse on length alone (TRUNCATED) where the stream
     * meets the trailing bytes inside a chunk first (DECRYPT): both fail. */
    ck_assert(sr == KMS_ERR_DECRYPT || sr == KMS_ERR_TRUNCATED);
    /* Only the two genuine full chunks may have been released. */
    ck_assert_uint_le(spt_len, 2 * TK_COB_CHUNK_LEN);
    ck_assert_mem_eq(spt, pt, spt_len);
    free(spt);
    free(p);
    expect_fail(big, ct_len + extra[i], "", r, 0);
    free(big);
  }
  /* A second valid message appended to the first. */
  big = malloc(2 * ct_len);
  memcpy(big, ct, ct_len);
  memcpy(big + ct_len, ct, ct_len);
  expect_fail(big, 2 * ct_len, "", KMS_ERR_DECRYPT, KMS_ERR_DECRYPT);
  free(big);
  free(pt);
  free(ct);
}
END_TEST

START_TEST(test_wrong_context_or_key_fails) {
  uint8_t *pt, *ct;
  size_t ct_len, n = 1;
  uint8_t out[200] = {0};
  uint8_t key2[32];

  ct = encrypt_new(100, "tenant=a", &pt, &ct_len);
  expect_fail(ct, ct_len, "tenant=b", KMS_ERR_DECRYPT, KMS_ERR_DECRYPT);
  expect_fail(ct, ct_len, "", KMS_ERR_DECRYPT, KMS_ERR_DECRYPT);
  expect_fail(ct, ct_len, "tenant=a\x01", KMS_ERR_DECRYPT, KMS_ERR_DECRYPT);
  memcpy(key2, k_key, 32);
  key2[31] ^= 1;
  ck_assert_int_eq(tk_cob_decrypt(out, sizeof(out), &n, key2, 32,
                                  (const uint8_t *)"tenant=a", 8, ct, ct_len),
                   KMS_ERR_DECRYPT);
  ck_assert_int_eq(tk_cob_decrypt(out, sizeof(out), &n, k_key, 32,
                                  (const uint8_t *)"tenant=a", 8, ct, ct_len),
                   KMS_OK);
  ck_assert_uint_eq(n, 100);
  ck_assert_mem_eq(out, pt, 100);
  free(pt);
  free(ct);
}
END_TEST

START_TEST(test_flipped_commitment_releases_nothing) {
  uint8_t *pt, *ct;
  size_t ct_len, n = 1;
  tk_cob_dec *st = NULL;
  uint8_t *out;

  ct = encrypt_new(50000, "", &pt, &ct_len);
  ct[TK_COB_SALT_LEN + 5] ^= 0x10;
  expect_fail(ct, ct_len, "", KMS_ERR_DECRYPT, KMS_ERR_DECRYPT);
  /* Streaming, everything in one call: error on the header, nothing out. */
  out = calloc(1, tk_cob_dec_update_max(ct_len));
  ck_assert_int_eq(tk_cob_dec_init(&st, k_key, 32, NULL, 0), KMS_OK);
  ck_assert_int_eq(tk_cob_dec_update(st, out, tk_cob_dec_update_max(ct_len),
                                     &n, ct, ct_len),
                   KMS_ERR_DECRYPT);
  ck_assert_uint_eq(n, 0);
  ck_assert(all_zero(out, tk_cob_dec_update_max(ct_len)));
  tk_cob_dec_free(st);
  /* With the explicit header call. */
  ck_assert_int_eq(tk_cob_dec_init(&st, k_key, 32, NULL, 0), KMS_OK);
  ck_assert_int_eq(tk_cob_dec_header(st, ct, TK_COB_HEADER_LEN),
                   KMS_ERR_DECRYPT);
  ck_assert_int_eq(tk_cob_dec_update(st, out, tk_cob_dec_update_max(100), &n,
                                     ct + TK_COB_HEADER_LEN, 100),
                   KMS_ERR_DECRYPT);
  tk_cob_dec_free(st);
  /* Salt modified: also a commitment failure. */
  ct[TK_COB_SALT_LEN + 5] ^= 0x10;
  ct[3] ^= 1;
  expect_fail(ct, ct_len, "", KMS_ERR_DECRYPT, KMS_ERR_DECRYPT);
  free(out);
  free(pt);
  free(ct);
}
END_TEST

/* roundtrip_all checks one message on every path. */
static void roundtrip_all(size_t pt_len, size_t want_ct_len) {
  uint8_t *pt, *ct, *out, *spt, *re;
  size_t ct_len, n = 1, spt_len;
  struct membuf mb;
  tk_cob_reader *rd = NULL;

  ct = encrypt_new(pt_len, "ctx", &pt, &ct_len);
  ck_assert_uint_eq(ct_len, want_ct_len);
  out = calloc(1, pt_len + 1);
  ck_assert_int_eq(tk_cob_decrypt(out, pt_len, &n, k_key, 32,
                                  (const uint8_t *)"ctx", 3, ct, ct_len),
                   KMS_OK);
  ck_assert_uint_eq(n, pt_len);
  ck_assert_mem_eq(out, pt, pt_len);
  ck_assert_int_eq(stream_decrypt(k_key, 32, (const uint8_t *)"ctx", 3, ct,
                                  ct_len, pat_odd,
                                  sizeof(pat_odd) / sizeof(pat_odd[0]), &spt,
                                  &spt_len),
                   KMS_OK);
  ck_assert_uint_eq(spt_len, pt_len);
  ck_assert_mem_eq(spt, pt, pt_len);
  free(spt);
  mb = (struct membuf){ct, ct_len, 0, 0};
  ck_assert_int_eq(tk_cob_reader_open(&rd, k_key, 32, (const uint8_t *)"ctx",
                                      3, mem_read, &mb, ct_len),
                   KMS_OK);
  ck_assert_uint_eq(tk_cob_reader_plaintext_len(rd), pt_len);
  memset(out, 0, pt_len + 1);
  ck_assert_int_eq(tk_cob_reader_read(rd, out, 0, pt_len), KMS_OK);
  ck_assert_mem_eq(out, pt, pt_len);
  tk_cob_reader_free(rd);
  /* Streaming encryption with the same salt gives the same bytes. */
  re = stream_encrypt(k_key, ct, (const uint8_t *)"ctx", 3, pt, pt_len, &n);
  ck_assert_uint_eq(n, ct_len);
  ck_assert_mem_eq(re, ct, ct_len);
  free(re);
  free(out);
  free(pt);
  free(ct);
}

START_TEST(test_empty_message) {
  roundtrip_all(0, 72);
}
END_TEST

START_TEST(test_exactly_16k_is_two_chunks) {
  roundtrip_all(16384, 56 + 16400 + 16);
  roundtrip_all(16383, 56 + 16399);
  roundtrip_all(32768, 56 + 2 * 16400 + 16);
  roundtrip_all(1, 56 + 17);
}
END_TEST

START_TEST(test_5mib_streamed_constant_memory) {
  /* Plaintext is generated, encrypted, decrypted and hashed piece by piece:
   * nothing the size of the message is ever allocated. */
  const size_t total = 5 * 1024 * 1024 + 12345;
  tk_cob_enc *enc = NULL;
  tk_cob_dec *dec = NULL;
  uint8_t hdr[TK_COB_HEADER_LEN];
  uint8_t in[70000], mid[80000], out[100000];
  size_t done = 0, n, m, ct_total = TK_COB_HEADER_LEN, pt_total = 0;
  EVP_MD_CTX *h_in = EVP_MD_CTX_new(), *h_out = EVP_MD_CTX_new();
  uint8_t d_in[64], d_out[64];

  ck_assert_int_eq(EVP_DigestInit_ex(h_in, EVP_sha512(), NULL), 1);
  ck_assert_int_eq(EVP_DigestInit_ex(h_out, EVP_sha512(), NULL), 1);
  ck_assert_int_eq(tk_cob_enc_init(&enc, hdr, k_key, 32, NULL,
                                   (const uint8_t *)"big", 3),
                   KMS_OK);
  ck_assert_int_eq(tk_cob_dec_init(&dec, k_key, 32, (const uint8_t *)"big", 3),
                   KMS_OK);
  /* The header in two odd pieces. */
  ck_assert_int_eq(tk_cob_dec_update(dec, out, sizeof(out), &m, hdr, 13),
                   KMS_OK);
  ck_assert_int_eq(tk_cob_dec_update(dec, out, sizeof(out), &m, hdr + 13,
                                     sizeof(hdr) - 13),
                   KMS_OK);
  ck_assert_uint_eq(m, 0);
  while (done < total) {
    size_t piece = (size_t)(rng() % 65536);
    if (piece > total - done) {
      piece = total - done;
    }
    for (size_t i = 0; i < piece; i++) {
      in[i] = (uint8_t)(rng() >> 32);
    }
    EVP_DigestUpdate(h_in, in, piece);
    ck_assert_uint_le(tk_cob_enc_update_max(piece), sizeof(mid));
    ck_assert_int_eq(tk_cob_enc_update(enc, mid, sizeof(mid), &n, in, piece),
                     KMS_OK);
    ct_total += n;
    /* Feed the ciphertext to the decryptor in two uneven halves. */
    {
      size_t h = n / 3;
      ck_assert_int_eq(tk_cob_dec_update(dec, out, sizeof(out), &m, mid, h),
                       KMS_OK);
      EVP_DigestUpdate(h_out, out, m);
      pt_total += m;
      ck_assert_int_eq(tk_cob_dec_update(dec, out, sizeof(out), &m, mid + h,
                                         n - h),
                       KMS_OK);
      EVP_DigestUpdate(h_out, out, m);
      pt_total += m;
    }
    done += piece;
  }
  ck_assert_int_eq(tk_cob_enc_final(enc, mid, sizeof(mid), &n), KMS_OK);
  ct_total += n;
  ck_assert_int_eq(tk_cob_dec_update(dec, out, sizeof(out), &m, mid, n),
                   KMS_OK);
  EVP_DigestUpdate(h_out, out, m);
  pt_total += m;
  ck_assert_int_eq(tk_cob_dec_final(dec, out, sizeof(out), &m), KMS_OK);
  EVP_DigestUpdate(h_out, out, m);
  pt_total += m;
  ck_assert_uint_eq(pt_total, total);
  ck_assert_uint_eq(ct_total, tk_cob_ciphertext_len(total));
  EVP_DigestFinal_ex(h_in, d_in, NULL);
  EVP_DigestFinal_ex(h_out, d_out, NULL);
  ck_assert_mem_eq(d_in, d_out, 64);
  EVP_MD_CTX_free(h_in);
  EVP_MD_CTX_free(h_out);
  tk_cob_enc_free(enc);
  tk_cob_dec_free(dec);
}
END_TEST

START_TEST(test_misuse_rejected) {
  uint8_t buf[40000], ct[40000], hdr[TK_COB_HEADER_LEN];
  uint8_t bigctx[TK_COB_MAX_CONTEXT_LEN + 1] = {0};
  size_t n = 7;
  tk_cob_enc *enc = NULL;
  tk_cob_dec *dec = NULL;
  tk_cob_reader *rd = NULL;
  struct membuf mb;

  memset(buf, 1, sizeof(buf));
  /* Key sizes. */
  ck_assert_int_eq(tk_cob_encrypt(ct, sizeof(ct), &n, k_key, 16, NULL, 0, buf,
                                  10),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(tk_cob_decrypt(buf, sizeof(buf), &n, k_key, 31, NULL, 0,
                                  ct, 100),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_enc_init(&enc, hdr, k_key, 33, NULL, NULL, 0),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(enc);
  ck_assert_int_eq(tk_cob_dec_init(&dec, k_key, 0, NULL, 0),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_null(dec);
  /* Context too long (but the maximum is fine). */
  ck_assert_int_eq(tk_cob_encrypt(ct, sizeof(ct), &n, k_key, 32, bigctx,
                                  sizeof(bigctx), buf, 10),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_encrypt(ct, sizeof(ct), &n, k_key, 32, bigctx,
                                  sizeof(bigctx) - 1, buf, 10),
                   KMS_OK);
  ck_assert_int_eq(tk_cob_decrypt(buf, sizeof(buf), &n, k_key, 32, bigctx,
                                  sizeof(bigctx) - 1, ct, 56 + 26),
                   KMS_OK);
  ck_assert_uint_eq(n, 10);
  /* Output too small. */
  ck_assert_int_eq(tk_cob_encrypt(ct, 56 + 25, &n, k_key, 32, NULL, 0, buf,
                                  10),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_encrypt(ct, sizeof(ct), &n, k_key, 32, NULL, 0, buf,
                                  20000),
                   KMS_OK);
  ck_assert_int_eq(tk_cob_decrypt(buf, 19999, &n, k_key, 32, NULL, 0, ct, n),
                   KMS_ERR_INVALID_ARGUMENT);
  /* Streaming encryptor: too-small output consumes nothing; use after final. */
  ck_assert_int_eq(tk_cob_enc_init(&enc, hdr, k_key, 32, NULL, NULL, 0),
                   KMS_OK);
  ck_assert_int_eq(tk_cob_enc_update(enc, ct, 100, &n, buf, 16000), KMS_OK);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(tk_cob_enc_update(enc, ct, 16399, &n, buf, 400),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_enc_update(enc, ct, 16400, &n, buf, 400), KMS_OK);
  ck_assert_uint_eq(n, 16400);
  ck_assert_int_eq(tk_cob_enc_final(enc, ct, 31, &n), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_enc_final(enc, ct, 32, &n), KMS_OK);
  ck_assert_uint_eq(n, 32);
  ck_assert_int_eq(tk_cob_enc_update(enc, ct, sizeof(ct), &n, buf, 1),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_enc_final(enc, ct, sizeof(ct), &n),
                   KMS_ERR_INVALID_ARGUMENT);
  tk_cob_enc_free(enc);
  /* Streaming decryptor: too-small output consumes nothing. */
  ck_assert_int_eq(tk_cob_encrypt(ct, sizeof(ct), &n, k_key, 32, NULL, 0, buf,
                                  20000),
                   KMS_OK);
  ck_assert_int_eq(tk_cob_dec_init(&dec, k_key, 32, NULL, 0), KMS_OK);
  ck_assert_int_eq(tk_cob_dec_update(dec, buf, 16383, &n, ct, n),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_dec_header(dec, ct, 55), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_dec_header(dec, ct, 56), KMS_OK);
  ck_assert_int_eq(tk_cob_dec_header(dec, ct, 56), KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_dec_update(dec, buf, 16384, &n, ct + 56, 16401),
                   KMS_OK);
  ck_assert_uint_eq(n, 16384);
  ck_assert_int_eq(tk_cob_dec_update(dec, buf, 0, &n, ct + 56 + 16401,
                                     20000 - 16384 + 16 - 1),
                   KMS_OK);
  ck_assert_int_eq(tk_cob_dec_final(dec, buf, 20000 - 16384 - 1, &n),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_dec_final(dec, buf, 20000 - 16384, &n), KMS_OK);
  ck_assert_uint_eq(n, 20000 - 16384);
  tk_cob_dec_free(dec);
  /* Reader: out of range, and the read function's error passes through. */
  n = (size_t)tk_cob_ciphertext_len(20000);
  mb = (struct membuf){ct, n, 0, 0};
  ck_assert_int_eq(tk_cob_reader_open(&rd, k_key, 32, NULL, 0, mem_read, &mb,
                                      n),
                   KMS_OK);
  ck_assert_int_eq(tk_cob_reader_read(rd, buf, 19990, 11),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_reader_read(rd, buf, 20001, 0),
                   KMS_ERR_INVALID_ARGUMENT);
  ck_assert_int_eq(tk_cob_reader_read(rd, buf, 19990, 10), KMS_OK);
  mb.fail_at_call = mb.calls + 1;
  ck_assert_int_eq(tk_cob_reader_read(rd, buf, 0, 10), KMS_ERR_IO);
  tk_cob_reader_free(rd);
  mb = (struct membuf){ct, n - 1, 0, 0};
  ck_assert_int_eq(tk_cob_reader_open(&rd, k_key, 32, NULL, 0, mem_read, &mb,
                                      n),
                   KMS_ERR_IO);
  ck_assert_ptr_null(rd);
  ck_assert_int_eq(tk_cob_reader_open(&rd, k_key, 32, NULL, 0, NULL, &mb, n),
                   KMS_ERR_INVALID_ARGUMENT);
  tk_cob_enc_free(NULL);
  tk_cob_dec_free(NULL);
  tk_cob_reader_free(NULL);
}
END_TEST

START_TEST(test_random_salt_differs) {
  uint8_t a[100], b[100], pt[10] = {0};
  size_t n;
  ck_assert_int_eq(tk_cob_encrypt(a, sizeof(a), &n, k_key, 32, NULL, 0, pt,
                                  10),
                   KMS_OK);
  ck_assert_int_eq(tk_cob_encrypt(b, sizeof(b), &n, k_key, 32, NULL, 0, pt,
                                  10),
                   KMS_OK);
  ck_assert(memcmp(a, b, TK_COB_SALT_LEN) != 0);
  ck_assert(memcmp(a + 56, b + 56, 26) != 0);
}
END_TEST

/*
 * Salts come from a per-thread buffer (cobblestone.c): a child made by fork()
 * must not reuse the salts its parent has not used yet, or a parent and child
 * sealing under one key would derive the same message key and nonces.
 */
START_TEST(test_salt_not_repeated_across_fork) {
  uint8_t a[100], b[100], pt[10] = {0};
  size_t n;
  int fds[2];
  /* Fill the parent's buffer, so the child would inherit unused salts. */
  ck_assert_int_eq(tk_cob_encrypt(a, sizeof(a), &n, k_key, 32, NULL, 0, pt, 10),
                   KMS_OK);
  ck_assert_int_eq(pipe(fds), 0);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    int ok = tk_cob_encrypt(b, sizeof(b), &n, k_key, 32, NULL, 0, pt, 10) == KMS_OK &&
             write(fds[1], b, TK_COB_SALT_LEN) == TK_COB_SALT_LEN;
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ck_assert_int_eq(read(fds[0], b, TK_COB_SALT_LEN), TK_COB_SALT_LEN);
  close(fds[0]);
  close(fds[1]);
  /* The parent's next salt is the one the child would have taken from the buffer. */
  ck_assert_int_eq(tk_cob_encrypt(a, sizeof(a), &n, k_key, 32, NULL, 0, pt, 10),
                   KMS_OK);
  ck_assert(memcmp(a, b, TK_COB_SALT_LEN) != 0);
}
END_TEST

static Suite *cobblestone_suite(void) {
  Suite *s = suite_create("cobblestone");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 110);
  tcase_add_test(tc, test_wycheproof_cobblestone);
  tcase_add_test(tc, test_truncation_at_chunk_boundary);
  tcase_add_test(tc, test_chunk_swap_fails);
  tcase_add_test(tc, test_trailing_data_fails);
  tcase_add_test(tc, test_wrong_context_or_key_fails);
  tcase_add_test(tc, test_flipped_commitment_releases_nothing);
  tcase_add_test(tc, test_empty_message);
  tcase_add_test(tc, test_exactly_16k_is_two_chunks);
  tcase_add_test(tc, test_5mib_streamed_constant_memory);
  tcase_add_test(tc, test_misuse_rejected);
  tcase_add_test(tc, test_random_salt_differs);
  tcase_add_test(tc, test_salt_not_repeated_across_fork);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(cobblestone_suite());
  int failed;
  srunner_run_all(sr, CK_ENV);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
