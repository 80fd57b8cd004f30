/* kms-bench --baseline-aead: Cobblestone-256 and the envelope API (libtenantkey) against raw OpenSSL EVP AES-256-GCM. */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "cobblestone.h"
#include "kms_err.h"
#include "tenantkey.h"

enum { RAW_FRESH, RAW_REUSE, COB_ENC, COB_DEC, SEAL, OPEN, STR_SEAL, STR_OPEN, KINDS_ };
#define RAW_KINDS 4 /* kinds measured without kmsd */
#define STREAM_PIECE 65536

static const uint8_t key[32] = "kms-bench-aead-key-32-bytes-long";
static const uint8_t iv[12] = "kms-bench-iv";

/* The buffers and, for the envelope kinds, the client and session key in use. */
struct aead_state {
  const EVP_CIPHER *c;
  const uint8_t *pt;
  const uint8_t *ct; /* Cobblestone ciphertext of pt[0..len) */
  size_t ct_len;
  const uint8_t *env; /* an envelope of pt[0..len) under the session */
  size_t env_len;
  uint8_t *out;
  size_t out_cap;
  tk_client *client;
  tk_session *session;
};

/* Thread CPU time: other processes on the 2 cores only ever slow a trial's wall clock. */
static double
cpu_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
seal(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *c, uint8_t *out, const uint8_t *in, size_t len)
{
  int outl = 0;
  if (EVP_EncryptInit_ex(ctx, c, NULL, c != NULL ? key : NULL, iv) != 1) {
    return -1;
  }
  /* EVP takes an int length: feed 1 GiB pieces at most. */
  size_t off = 0;
  while (off < len) {
    size_t n = len - off < (1u << 30) ? len - off : (1u << 30);
    if (EVP_EncryptUpdate(ctx, out + off, &outl, in + off, (int)n) != 1) {
      return -1;
    }
    off += n;
  }
  if (EVP_EncryptFinal_ex(ctx, out + len, &outl) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, out + len) != 1) {
    return -1;
  }
  return 0;
}

/*
 * Streams |in| through |st| in STREAM_PIECE updates, writing the output one
 * piece after the other into |out| as a file writer would, then finals.
 */
static int
stream_all(tk_stream *st, uint8_t *out, size_t out_cap, const uint8_t *in, size_t len)
{
  size_t pos = 0, off = 0, n = 0;
  while (pos < len) {
    size_t piece = len - pos < STREAM_PIECE ? len - pos : STREAM_PIECE;
    if (out_cap - off < tk_stream_update_max(piece) ||
        tk_stream_update(st, out + off, out_cap - off, &n, in + pos, piece) != TK_OK) {
      return -1;
    }
    off += n;
    pos += piece;
  }
  if (out_cap - off < TK_STREAM_FINAL_MAX || tk_stream_final(st, out + off, out_cap - off, &n) !=
                                                  TK_OK) {
    return -1;
  }
  return 0;
}

/* One message of |kind|; 0 or -1. */
static int
one(int kind, size_t len, const struct aead_state *s, EVP_CIPHER_CTX *reuse)
{
  size_t n = 0;
  int bad = 0;
  tk_stream *st = NULL;
  switch (kind) {
  case RAW_FRESH: {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    bad = ctx == NULL || seal(ctx, s->c, s->out, s->pt, len) != 0;
    EVP_CIPHER_CTX_free(ctx);
    break;
  }
  case RAW_REUSE:
    bad = seal(reuse, NULL, s->out, s->pt, len) != 0;
    break;
  case COB_ENC:
    bad = tk_cob_encrypt(s->out, s->out_cap, &n, key, sizeof(key), NULL, 0, s->pt, len) !=
          KMS_OK;
    break;
  case COB_DEC:
    bad = tk_cob_decrypt(s->out, s->out_cap, &n, key, sizeof(key), NULL, 0, s->ct, s->ct_len) !=
          KMS_OK;
    break;
  case SEAL:
    bad = tk_seal_session(s->session, s->out, s->out_cap, &n, NULL, s->pt, len) != TK_OK;
    break;
  case OPEN:
    bad = tk_open(s->client, s->out, s->out_cap, &n, s->env, s->env_len) != TK_OK || n != len;
    break;
  case STR_SEAL:
    bad = tk_stream_seal_session_new(&st, s->session, NULL) != TK_OK ||
          stream_all(st, s->out, s->out_cap, s->pt, len) != 0;
    break;
  default:
    bad = tk_stream_open_new(s->client, &st) != TK_OK ||
          stream_all(st, s->out, s->out_cap, s->env, s->env_len) != 0;
    break;
  }
  tk_stream_free(st);
  return bad ? -1 : 0;
}

/*
 * One trial of |kind| at |len| bytes for about |secs|; returns MB/s or -1.
 * Opening kinds ask kmsd for the key each time: they are timed by the wall
 * clock (a round trip is waiting, not CPU), everything else by thread CPU.
 */
static double
trial(int kind, size_t len, double secs, const struct aead_state *s)
{
  EVP_CIPHER_CTX *reuse = EVP_CIPHER_CTX_new();
  if (reuse == NULL || EVP_EncryptInit_ex(reuse, s->c, NULL, key, NULL) != 1) {
    EVP_CIPHER_CTX_free(reuse);
    return -1;
  }
  double (*clock_fn)(void) = kind == OPEN || kind == STR_OPEN ? bench_now : cpu_now;
  double t0 = clock_fn(), t = 0;
  uint64_t bytes = 0;
  int bad = 0;
  do {
    bad = one(kind, len, s, reuse) != 0;
    bytes += len;
    t = clock_fn() - t0;
  } while (!bad && t < secs);
  EVP_CIPHER_CTX_free(reuse);
  return bad ? -1 : (double)bytes / t / 1e6;
}

/* Opens the session whose key the envelope kinds use, with a client for tk_open. */
static int
env_setup(struct aead_state *s, const struct aead_env_cfg *env, char *err, size_t err_len)
{
  char e[256] = "";
  tk_context *attrs = NULL;
  if (tk_client_new_from_file(&s->client, env->client_config, e, sizeof(e)) != TK_OK) {
    snprintf(err, err_len, "baseline-aead: %s: %s", env->client_config, e);
    return -1;
  }
  int r = tk_session_open(s->client, &s->session, env->tenant, env->session_id, NULL);
  if (r != TK_OK) {
    tk_client_last_message(s->client, e, sizeof(e));
    snprintf(err, err_len, "baseline-aead: OpenSession %s of %s: %s%s%s", env->session_id,
             env->tenant, tk_strerror(r), e[0] != '\0' ? ": " : "", e);
    return -1;
  }
  /* tk_open fetches a session envelope's key with the client's attributes: the purpose. */
  if (env->purpose != NULL && env->purpose[0] != '\0') {
    attrs = tk_context_new();
    if (attrs == NULL || tk_context_add(attrs, "purpose", env->purpose) != TK_OK ||
        tk_client_set_attributes(s->client, attrs) != TK_OK) {
      tk_context_free(attrs);
      snprintf(err, err_len, "baseline-aead: cannot set the purpose attribute");
      return -1;
    }
    tk_context_free(attrs);
  }
  return 0;
}

int
aead_bench_run(struct aead_bench_row rows[4], double secs_per_cell,
               const struct aead_env_cfg *env, char *err, size_t err_len)
{
  static const size_t sizes[4] = {1024, 16384, 1u << 20, 64u << 20};
  const size_t max = sizes[3];
  const size_t cap = tk_seal_max_len(max) + tk_stream_update_max(STREAM_PIECE) +
                     TK_STREAM_FINAL_MAX + 64;
  const int kinds = env != NULL ? KINDS_ : RAW_KINDS;
  int r = -1;
  struct aead_state s = {0};
  EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
  uint8_t *pt = malloc(max), *ct = malloc(cap), *out = malloc(cap);
  uint8_t *envbuf = env != NULL ? malloc(cap) : NULL;
  if (c == NULL || pt == NULL || ct == NULL || out == NULL || (env != NULL && envbuf == NULL)) {
    snprintf(err, err_len, "out of memory or no AES-256-GCM");
    goto out;
  }
  if (env != NULL && env_setup(&s, env, err, err_len) != 0) {
    goto out;
  }
  memset(pt, 0x5a, max);
  memset(ct, 0, cap);
  memset(out, 0, cap); /* touch every page before timing */
  if (envbuf != NULL) {
    memset(envbuf, 0, cap);
  }
  s.c = c;
  s.pt = pt;
  s.ct = ct;
  s.env = envbuf;
  s.out = out;
  s.out_cap = cap;
  for (int i = 0; i < 4; i++) {
    size_t len = sizes[i], ct_len = 0, env_len = 0;
    if (tk_cob_encrypt(ct, cap, &ct_len, key, sizeof(key), NULL, 0, pt, len) != KMS_OK) {
      snprintf(err, err_len, "tk_cob_encrypt failed");
      goto out;
    }
    s.ct_len = ct_len;
    if (env != NULL &&
        tk_seal_session(s.session, envbuf, cap, &env_len, NULL, pt, len) != TK_OK) {
      snprintf(err, err_len, "tk_seal_session failed");
      goto out;
    }
    s.env_len = env_len;
    double best[KINDS_] = {0};
    /* Best of 5 interleaved trials per cell. */
    for (int rep = 0; rep < 5; rep++) {
      for (int k = 0; k < kinds; k++) {
        double v = trial(k, len, secs_per_cell / 5, &s);
        if (v < 0) {
          char m[160] = "";
          if (k >= RAW_KINDS && s.client != NULL) {
            tk_client_last_message(s.client, m, sizeof(m));
          }
          snprintf(err, err_len, "AEAD trial failed (kind %d, %zu bytes)%s%s", k, len,
                   m[0] != '\0' ? ": " : "", m);
          goto out;
        }
        if (v > best[k]) {
          best[k] = v;
        }
      }
    }
    memset(&rows[i], 0, sizeof(rows[i]));
    rows[i].size = len;
    rows[i].raw_fresh_mbs = best[RAW_FRESH];
    rows[i].raw_reuse_mbs = best[RAW_REUSE];
    rows[i].cob_enc_mbs = best[COB_ENC];
    rows[i].cob_dec_mbs = best[COB_DEC];
    rows[i].seal_mbs = best[SEAL];
    rows[i].open_mbs = best[OPEN];
    rows[i].stream_seal_mbs = best[STR_SEAL];
    rows[i].stream_open_mbs = best[STR_OPEN];
  }
  r = 0;
out:
  tk_session_free(s.session);
  tk_client_free(s.client);
  EVP_CIPHER_free(c);
  free(pt);
  free(ct);
  free(out);
  free(envbuf);
  return r;
}
