/* kms-bench internals: latency histograms, the pipelined RPC load engine and the baselines. */
#ifndef TOOLS_BENCH_H
#define TOOLS_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#include "kms.pb-c.h"

/* ---- Latency histogram (log-linear, < 1.6% relative error, 1 ns .. ~18 min) ---- */

#define HIST_SUB_BITS 6
#define HIST_BUCKETS (2 * (1 << HIST_SUB_BITS) + 40 * (1 << HIST_SUB_BITS))

struct bench_hist {
  uint64_t n;
  uint64_t max_ns;
  double sum_ns;
  uint64_t counts[HIST_BUCKETS];
};

void hist_add(struct bench_hist *h, uint64_t ns);
void hist_merge(struct bench_hist *dst, const struct bench_hist *src);
/* hist_quantile returns the upper bound (ns) of the bucket holding quantile |q| (0..1). */
uint64_t hist_quantile(const struct bench_hist *h, double q);

/* ---- Operations ------------------------------------------------------------- */

enum bench_op {
  BOP_GENERATE,
  BOP_DECRYPT,
  BOP_REENCRYPT,    /* ReEncrypt of a tenant's pre-generated wrapped key to the newest version */
  BOP_SESSION_GET,  /* GetSessionKey of a tenant's pre-opened session */
  BOP_OPEN_SESSION, /* count mode only: opens the sessions session-get reads */
  BOP_CREATE_TENANT,
  BOP_COUNT_,
};

const char *bench_op_name(int op);

/*
 * A wrapped data key of one tenant, with its plaintext so decrypts can be
 * checked, and the KEK version that wrapped it (re-encrypt checks its source
 * version). For sessions only |plaintext| and |ok| are used: the session key.
 */
struct bench_blob {
  uint8_t wrapped[128];
  size_t wrapped_len;
  uint8_t plaintext[32];
  uint32_t kek_version;
  bool ok;
};

/* ---- Load engine -------------------------------------------------------------- */

struct load_cfg {
  const char *host;
  const char *port;
  SSL_CTX *ctx;
  unsigned conns;    /* connections in total */
  unsigned inflight; /* closed loop: requests in flight per connection */
  unsigned threads;  /* client threads; connections are split between them */
  double warmup_s;
  double duration_s;
  double rate; /* > 0: open loop, requests per second in total, scheduled evenly */
  /* The mix: |mix_n| op codes drawn uniformly (weights expand into repeats). */
  const uint8_t *mix;
  size_t mix_n;
  unsigned tenants;          /* requests spread uniformly over tenants 0..tenants-1 */
  const char *tenant_prefix; /* tenant i is "<prefix><i, 7 digits>" */
  struct bench_blob *blobs;  /* one per tenant (decrypt, re-encrypt); may be NULL without them */
  struct bench_blob *sessions; /* one per tenant (session-get); may be NULL without it */
  /* Count mode re-encrypt: the re-wrapped keys go here (plaintext copied from |blobs|). */
  struct bench_blob *rewrapped;
  /*
   * verify: decrypt must return the recorded plaintext, session-get the key
   * OpenSession returned, re-encrypt must name the recorded source version and
   * a target version not older than it.
   */
  bool verify;
  Tkms__ContextEntry **context; /* sent with every generate, decrypt and re-encrypt */
  size_t n_context;
  const char *session_prefix; /* tenant i's session is "<prefix><i, 7 digits>" */
  const char *purpose;        /* GetSessionKey's purpose ("" for none) */
  /*
   * Count mode (prefill, tenant creation): instead of a timed run, send exactly
   * one request of op |count_op| for every tenant index and stop when all are
   * answered. Responses fill |blobs| (generate), |sessions| (open-session),
   * |rewrapped| (re-encrypt) or count as ok (create; ALREADY_EXISTS too).
   */
  bool count_mode;
  int count_op;
  pid_t server_pid; /* > 0: measure that process's CPU time over the window */
};

struct load_result {
  uint64_t ok[BOP_COUNT_];
  uint64_t errors[BOP_COUNT_];
  uint64_t mismatches;
  struct bench_hist hist[BOP_COUNT_];
  struct bench_hist all;
  double window_s;        /* measured window, seconds */
  double client_cpu_s;    /* this process, over the window */
  double server_cpu_s;    /* server_pid, over the window (0 if unknown) */
  uint64_t late;          /* open loop: sends that left > 1 ms after their schedule */
  long server_rss_kb;     /* server_pid's VmRSS / VmHWM at the end of the window, -1 if unknown */
  long server_hwm_kb;
  char first_error[200];  /* first error status and message, for the report */
};

/*
 * load_run connects cfg->conns mutual-TLS connections and drives them.
 * Returns 0, or -1 with a reason in |err| if connections fail or die.
 */
int load_run(const struct load_cfg *cfg, struct load_result *out, char *err, size_t err_len);

/* ---- Baselines ---------------------------------------------------------------- */

struct kmsd_config;

/*
 * echo_server_start forks a process that answers every request inline on its
 * TLS loop (no workers, no HSM, no keystore) with a response shaped like the
 * real one, over mutual TLS configured exactly as kmsd's. Returns 0 and the
 * child's pid and port.
 */
int echo_server_start(const struct kmsd_config *cfg, pid_t *out_pid, unsigned *out_port,
                      char *err, size_t err_len);
void echo_server_stop(pid_t pid);

struct hsm_bench_result {
  uint64_t ok[BOP_COUNT_];
  struct bench_hist hist[BOP_COUNT_];
  struct bench_hist all;
  double window_s;
  double cpu_s;
  unsigned threads;
};

/*
 * hsm_bench_run performs the mix's HSM work in-process through kmsd/hsm.h:
 * generate = 32 random bytes + AES-GCM encrypt under a loaded KEK, decrypt =
 * AES-GCM decrypt; |threads| threads (kmsd's worker count), each with its own
 * session, each HSM call preceded by |latency_us| of sleep like kmsd's knob.
 */
int hsm_bench_run(const struct kmsd_config *cfg, unsigned threads, unsigned latency_us,
                  const uint8_t *mix, size_t mix_n, double warmup_s, double duration_s,
                  struct hsm_bench_result *out, char *err, size_t err_len);

struct aead_bench_row {
  size_t size;
  double raw_fresh_mbs; /* EVP AES-256-GCM, new context and key schedule per message */
  double raw_reuse_mbs; /* EVP AES-256-GCM, keyed context reused, new IV per message */
  double cob_enc_mbs;   /* tk_cob_encrypt */
  double cob_dec_mbs;   /* tk_cob_decrypt */
  /* Envelope API; 0 when not measured (no kmsd given). See aead_bench_run. */
  double seal_mbs;        /* tk_seal_session: the session key held, no round trip */
  double open_mbs;        /* tk_open: one GetSessionKey round trip per envelope, wall time */
  double stream_seal_mbs; /* tk_stream_seal_session_new + 64 KiB updates + final */
  double stream_open_mbs; /* tk_stream_open_new + 64 KiB updates + final, wall time */
};

/* What the envelope columns of --baseline-aead need from kmsd (all NULL: not measured). */
struct aead_env_cfg {
  const char *client_config; /* libtenantkey client config (kms-bench's --config) */
  const char *tenant;        /* an existing tenant */
  const char *session_id;    /* a new session id, opened once */
  const char *purpose;       /* GetSessionKey purpose when opening ("" for none) */
};

/*
 * aead_bench_run measures the rows (1 KiB, 16 KiB, 1 MiB, 64 MiB), thread CPU
 * time, best of 5 interleaved trials per cell. With |env| (not NULL), it opens
 * one session in kmsd and also measures the envelope API under its key:
 * sealing is local per message (thread CPU time); opening asks kmsd for the
 * key once per envelope, as tk_open and tk_stream_open_new always do, and is
 * timed by the wall clock so the round trip counts.
 */
int aead_bench_run(struct aead_bench_row rows[4], double secs_per_cell,
                   const struct aead_env_cfg *env, char *err, size_t err_len);

/* ---- Helpers ------------------------------------------------------------------- */

double bench_now(void);        /* CLOCK_MONOTONIC, seconds */
uint64_t bench_now_ns(void);   /* CLOCK_MONOTONIC, nanoseconds */
double bench_proc_cpu(pid_t pid); /* utime + stime of |pid| in seconds, -1 if unknown */
long bench_proc_status_kb(pid_t pid, const char *field); /* e.g. "VmRSS"; -1 if unknown */

#endif
