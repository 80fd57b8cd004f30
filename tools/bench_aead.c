/* kms-bench --baseline-aead: Cobblestone-256 (libtenantkey) against raw OpenSSL EVP AES-256-GCM. */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "cobblestone.h"
#include "kms_err.h"

enum { RAW_FRESH, RAW_REUSE, COB_ENC, COB_DEC, KINDS_ };

static const uint8_t key[32] = "kms-bench-aead-key-32-bytes-long";
static const uint8_t iv[12] = "kms-bench-iv";

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

/* One trial of |kind| at |len| bytes for about |secs| of CPU; returns MB/s or -1. */
static double
trial(int kind, size_t len, double secs, const EVP_CIPHER *c, const uint8_t *pt, uint8_t *ct,
      size_t ct_len, uint8_t *out, size_t out_cap)
{
  EVP_CIPHER_CTX *reuse = EVP_CIPHER_CTX_new();
  if (reuse == NULL || EVP_EncryptInit_ex(reuse, c, NULL, key, NULL) != 1) {
    EVP_CIPHER_CTX_free(reuse);
    return -1;
  }
  double t0 = cpu_now(), t = 0;
  uint64_t bytes = 0;
  size_t n = 0;
  int bad = 0;
  do {
    switch (kind) {
    case RAW_FRESH: {
      EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
      bad = ctx == NULL || seal(ctx, c, out, pt, len) != 0;
      EVP_CIPHER_CTX_free(ctx);
      break;
    }
    case RAW_REUSE:
      bad = seal(reuse, NULL, out, pt, len) != 0;
      break;
    case COB_ENC:
      bad = tk_cob_encrypt(out, out_cap, &n, key, sizeof(key), NULL, 0, pt, len) != KMS_OK;
      break;
    default:
      bad = tk_cob_decrypt(out, out_cap, &n, key, sizeof(key), NULL, 0, ct, ct_len) != KMS_OK;
      break;
    }
    bytes += len;
    t = cpu_now() - t0;
  } while (!bad && t < secs);
  EVP_CIPHER_CTX_free(reuse);
  return bad ? -1 : (double)bytes / t / 1e6;
}

int
aead_bench_run(struct aead_bench_row rows[4], double secs_per_cell, char *err, size_t err_len)
{
  static const size_t sizes[4] = {1024, 16384, 1u << 20, 64u << 20};
  const size_t max = sizes[3];
  const size_t cap = (size_t)tk_cob_ciphertext_len(max) + 64;
  int r = -1;
  EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
  uint8_t *pt = malloc(max), *ct = malloc(cap), *out = malloc(cap);
  if (c == NULL || pt == NULL || ct == NULL || out == NULL) {
    snprintf(err, err_len, "out of memory or no AES-256-GCM");
    goto out;
  }
  memset(pt, 0x5a, max);
  memset(ct, 0, cap);
  memset(out, 0, cap); /* touch every page before timing */
  for (int i = 0; i < 4; i++) {
    size_t len = sizes[i], ct_len = 0;
    if (tk_cob_encrypt(ct, cap, &ct_len, key, sizeof(key), NULL, 0, pt, len) != KMS_OK) {
      snprintf(err, err_len, "tk_cob_encrypt failed");
      goto out;
    }
    double best[KINDS_] = {0};
    /* Best of 5 interleaved trials per cell. */
    for (int rep = 0; rep < 5; rep++) {
      for (int k = 0; k < KINDS_; k++) {
        double v = trial(k, len, secs_per_cell / 5, c, pt, ct, ct_len, out, cap);
        if (v < 0) {
          snprintf(err, err_len, "AEAD trial failed");
          goto out;
        }
        if (v > best[k]) {
          best[k] = v;
        }
      }
    }
    rows[i].size = len;
    rows[i].raw_fresh_mbs = best[RAW_FRESH];
    rows[i].raw_reuse_mbs = best[RAW_REUSE];
    rows[i].cob_enc_mbs = best[COB_ENC];
    rows[i].cob_dec_mbs = best[COB_DEC];
  }
  r = 0;
out:
  EVP_CIPHER_free(c);
  free(pt);
  free(ct);
  free(out);
  return r;
}
