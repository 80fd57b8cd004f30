/* kms-bench --baseline-hsm: kmsd's PKCS#11 work in-process through kmsd/hsm.h, no RPC, no keystore. */
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "config.h"
#include "dekwrap.h"
#include "hsm.h"
#include "kms_err.h"

struct hthread {
  pthread_t tid;
  hsm *h;
  hsm_key kek;
  unsigned latency_us;
  const uint8_t *mix;
  size_t mix_n;
  uint64_t t_measure, t_end;
  const struct dek_blob *sample; /* a valid blob for the decrypt op */
  const uint8_t *aad;
  size_t aad_len;
  uint64_t ok[BOP_COUNT_];
  struct bench_hist hist[BOP_COUNT_];
  int err;
};

/* The same emulated latency kmsd's hsm_latency_us adds before each hsm.h call. */
static void
delay(unsigned us)
{
  if (us == 0) {
    return;
  }
  struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

static void *
hthread_main(void *arg)
{
  struct hthread *t = arg;
  hsm_session *s = NULL;
  uint64_t rng = (uint64_t)(uintptr_t)t ^ bench_now_ns();
  t->err = hsm_session_open(t->h, &s);
  while (t->err == KMS_OK) {
    uint64_t t0 = bench_now_ns();
    if (t0 >= t->t_end) {
      break;
    }
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    int op = t->mix[rng % t->mix_n];
    uint8_t dek[DEKWRAP_KEY_LEN];
    struct dek_blob b;
    if (op == BOP_GENERATE) {
      delay(t->latency_us);
      t->err = hsm_random(s, dek, sizeof(dek));
      if (t->err == KMS_OK && RAND_bytes(b.iv, sizeof(b.iv)) != 1) {
        t->err = KMS_ERR_INTERNAL;
      }
      if (t->err == KMS_OK) {
        delay(t->latency_us);
        t->err = hsm_gcm_encrypt(s, t->kek, b.iv, t->aad, t->aad_len, dek, sizeof(dek),
                                 b.ct_tag);
      }
    } else {
      /* decrypt and session-get: one GCM decrypt of a wrapped key under the loaded KEK. */
      delay(t->latency_us);
      t->err = hsm_gcm_decrypt(s, t->kek, t->sample->iv, t->aad, t->aad_len,
                               t->sample->ct_tag, sizeof(t->sample->ct_tag), dek);
      /* re-encrypt: and wrap it again (the same KEK stands in for the newest version). */
      if (t->err == KMS_OK && op == BOP_REENCRYPT) {
        if (RAND_bytes(b.iv, sizeof(b.iv)) != 1) {
          t->err = KMS_ERR_INTERNAL;
        } else {
          delay(t->latency_us);
          t->err = hsm_gcm_encrypt(s, t->kek, b.iv, t->aad, t->aad_len, dek, sizeof(dek),
                                   b.ct_tag);
        }
      }
    }
    uint64_t t1 = bench_now_ns();
    if (t1 >= t->t_measure && t1 < t->t_end) {
      t->ok[op]++;
      hist_add(&t->hist[op], t1 - t0);
    }
  }
  hsm_session_close(s);
  return NULL;
}

static double
proc_cpu_self(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int
hsm_bench_run(const struct kmsd_config *cfg, unsigned threads, unsigned latency_us,
              const uint8_t *mix, size_t mix_n, double warmup_s, double duration_s,
              struct hsm_bench_result *out, char *err, size_t err_len)
{
  int r = -1;
  hsm *h = NULL;
  hsm_session *s = NULL;
  hsm_key kek = 0;
  struct hthread *th = NULL;
  unsigned started = 0;
  uint8_t token[HSM_KEY_TOKEN_MAX];
  size_t token_len = 0;
  uint32_t mech = 0;
  uint8_t aad[DEKWRAP_AAD_MAX];
  size_t aad_len = 0;
  uint8_t dek[DEKWRAP_KEY_LEN] = {0};
  struct dek_blob sample;

  memset(out, 0, sizeof(*out));
  struct hsm_config hc = {cfg->pkcs11_module, cfg->token_label, cfg->pin_file, 1, false};
  if (hsm_open(&h, &hc, err, err_len) != KMS_OK) {
    goto out;
  }
  if (hsm_session_open(h, &s) != KMS_OK ||
      hsm_kek_generate(s, token, &token_len, &mech, NULL) != KMS_OK ||
      hsm_kek_load(s, token, token_len, mech, 0, &kek) != KMS_OK) {
    snprintf(err, err_len, "cannot create and load a KEK for the HSM baseline");
    goto out;
  }
  /* The AAD kmsd builds for a tenant named like kms-bench's, version 1, no context. */
  if (dekwrap_aad(aad, sizeof(aad), &aad_len, "bench-0000000", 1, 0, NULL) != KMS_OK ||
      RAND_bytes(sample.iv, sizeof(sample.iv)) != 1 ||
      hsm_gcm_encrypt(s, kek, sample.iv, aad, aad_len, dek, sizeof(dek), sample.ct_tag) !=
          KMS_OK) {
    snprintf(err, err_len, "cannot prepare the HSM baseline");
    goto out;
  }
  th = calloc(threads, sizeof(*th));
  if (th == NULL) {
    snprintf(err, err_len, "out of memory");
    goto out;
  }
  uint64_t t0 = bench_now_ns();
  uint64_t t_measure = t0 + (uint64_t)(warmup_s * 1e9);
  uint64_t t_end = t_measure + (uint64_t)(duration_s * 1e9);
  double c0 = 0;
  for (unsigned i = 0; i < threads; i++) {
    struct hthread *t = &th[i];
    t->h = h;
    t->kek = kek;
    t->latency_us = latency_us;
    t->mix = mix;
    t->mix_n = mix_n;
    t->t_measure = t_measure;
    t->t_end = t_end;
    t->sample = &sample;
    t->aad = aad;
    t->aad_len = aad_len;
    if (pthread_create(&t->tid, NULL, hthread_main, t) != 0) {
      snprintf(err, err_len, "pthread_create failed");
      goto out;
    }
    started++;
  }
  struct timespec ts = {(time_t)warmup_s, (long)((warmup_s - (double)(time_t)warmup_s) * 1e9)};
  nanosleep(&ts, NULL);
  c0 = proc_cpu_self();
  for (unsigned i = 0; i < started; i++) {
    pthread_join(th[i].tid, NULL);
  }
  out->cpu_s = proc_cpu_self() - c0;
  started = 0;
  out->window_s = duration_s;
  out->threads = threads;
  r = 0;
  for (unsigned i = 0; i < threads; i++) {
    if (th[i].err != KMS_OK && r == 0) {
      snprintf(err, err_len, "HSM baseline: %s", kms_strerror(th[i].err));
      r = -1;
    }
    for (int op = 0; op < BOP_COUNT_; op++) {
      out->ok[op] += th[i].ok[op];
      hist_merge(&out->hist[op], &th[i].hist[op]);
      hist_merge(&out->all, &th[i].hist[op]);
    }
  }
out:
  for (unsigned i = 0; i < started; i++) {
    pthread_join(th[i].tid, NULL);
  }
  free(th);
  if (kek != 0) {
    hsm_kek_unload(s, kek);
  }
  hsm_session_close(s);
  hsm_close(h);
  return r;
}
