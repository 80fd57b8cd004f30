/* kms-bench: load generator for kmsd, with transport, HSM and AEAD baselines measured in the same run. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/resource.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "bench.h"
#include "config.h"
#include "kms_conf.h"
#include "kms_err.h"

#define MIX_MAX 256
#define ROUNDS_MAX 50

struct client_conf {
  char host[256];
  char port[8];
  char ca[512], cert[512], key[512];
};

struct opts {
  const char *config;
  const char *kmsd_config;
  const char *officer_config;
  unsigned conns, inflight, threads, tenants, hsm_threads, rounds;
  double duration, warmup, rate;
  const char *mix_spec;
  const char *tenant_prefix;
  const char *session_prefix;
  const char *purpose;
  const char *label;
  const char *json_out;
  Tkms__ContextEntry ctx_entries[4];
  Tkms__ContextEntry *ctx[4];
  char ctx_buf[4][160];
  size_t n_ctx;
  int create_tenants, baseline_tls, baseline_hsm, baseline_aead, no_kmsd, json, verify;
  pid_t kmsd_pid;
  double aead_secs;
};

struct phase {
  const char *name;
  int ran;
  struct load_result res;
};

static void
usage(FILE *f)
{
  fprintf(f,
          "usage: kms-bench [options]\n"
          "\n"
          "Drives a running kmsd with N mutual-TLS connections and M pipelined requests\n"
          "in flight on each, for T seconds, and prints ops/s and latency percentiles.\n"
          "Baselines run in the same invocation, so ratios hold on a noisy machine.\n"
          "\n"
          "  --config FILE          client config of a service (endpoint, ca, cert, key)\n"
          "  --kmsd-config FILE     kmsd.conf: certificates for --baseline-tls, HSM and\n"
          "                         workers for --baseline-hsm\n"
          "  --officer-config FILE  client config of an officer (for --create-tenants)\n"
          "  -c, --connections N    connections (default 16)\n"
          "  -m, --inflight M       requests in flight per connection (default 8; the\n"
          "                         cap per connection with --rate)\n"
          "  -d, --duration T       measured seconds (default 10)\n"
          "  --warmup S             seconds before measuring (default 1)\n"
          "  --mix SPEC             op=weight,... of generate, decrypt, re-encrypt,\n"
          "                         session-get (default generate=1). decrypt and\n"
          "                         re-encrypt first generate one wrapped key per\n"
          "                         tenant; session-get first opens one session per\n"
          "                         tenant (OpenSession)\n"
          "  --purpose P            GetSessionKey's purpose for session-get (default\n"
          "                         recording; \"\" for none)\n"
          "  --session-prefix P     tenant i's session is P followed by i in 7 digits\n"
          "                         (default kb-<time>-<pid>-: session ids are never\n"
          "                         reused, so every run opens new ones)\n"
          "  --rate R               open loop: R requests/s in total, evenly scheduled;\n"
          "                         latency counts from the scheduled time\n"
          "  --context KEY=VALUE    encryption context sent with every request (up to 4)\n"
          "  --tenants N            spread requests uniformly over N tenants (default 1)\n"
          "  --tenant-prefix P      tenant i is P followed by i in 7 digits (default bench-)\n"
          "  --create-tenants       first create the N tenants (pipelined; existing ones\n"
          "                         are fine)\n"
          "  --threads K            client threads (default 1)\n"
          "  --baseline-tls         also run the same load against an inline-answer TLS\n"
          "                         server (kmsd's TLS settings, no workers/HSM/keystore)\n"
          "  --baseline-hsm         also run the mix's HSM work in-process (hsm.h) with as\n"
          "                         many threads as kmsd workers (or --hsm-threads)\n"
          "  --hsm-threads N        threads for --baseline-hsm\n"
          "  --baseline-aead        also compare Cobblestone and the envelope API\n"
          "                         (tk_seal_session/tk_open, tk_stream_*) with raw EVP\n"
          "                         AES-256-GCM; the envelope columns need --config\n"
          "                         and its kmsd, also with --no-kmsd (one OpenSession\n"
          "                         on tenant 0 for the key; tk_open asks for it again)\n"
          "  --aead-seconds S       CPU seconds per AEAD cell (default 2)\n"
          "  --rounds N             run the baseline-tls, kmsd and baseline-hsm phases N\n"
          "                         times, interleaved, and report the median round of\n"
          "                         each (and the best); default 1\n"
          "  --no-kmsd              only the baselines\n"
          "  --no-verify            do not check decrypted keys against generated ones,\n"
          "                         session keys against opened ones, re-encrypt's\n"
          "                         versions; skips decrypting each re-encrypted key\n"
          "  --kmsd-pid PID         also report kmsd's CPU time and memory\n"
          "  --label TEXT           names the run in the output\n"
          "  --json                 machine-readable output (one JSON object)\n"
          "  --json-out FILE        also append that object to FILE as one line\n");
}

/* ---- Configuration -------------------------------------------------------------- */

static int
on_client_entry(void *arg, const char *key, const char *value, char *why, size_t why_len)
{
  struct client_conf *c = arg;
  char *dst = NULL;
  size_t cap = 0;
  if (strcmp(key, "endpoint") == 0) {
    if (c->host[0] != '\0') {
      return KMS_OK; /* the first endpoint is the one benchmarked */
    }
    const char *colon = strrchr(value, ':');
    unsigned long long port;
    if (colon == NULL || colon == value || (size_t)(colon - value) >= sizeof(c->host) ||
        kms_conf_uint(colon + 1, 1, 65535, &port) != KMS_OK) {
      snprintf(why, why_len, "expected HOST:PORT with a port in 1-65535");
      return KMS_ERR_CONFIG;
    }
    memcpy(c->host, value, (size_t)(colon - value));
    c->host[colon - value] = '\0';
    snprintf(c->port, sizeof(c->port), "%llu", port);
    return KMS_OK;
  }
  if (strcmp(key, "ca") == 0) {
    dst = c->ca, cap = sizeof(c->ca);
  } else if (strcmp(key, "cert") == 0) {
    dst = c->cert, cap = sizeof(c->cert);
  } else if (strcmp(key, "key") == 0) {
    dst = c->key, cap = sizeof(c->key);
  } else if (strcmp(key, "connect_timeout_ms") == 0 || strcmp(key, "request_timeout_ms") == 0) {
    return KMS_OK;
  } else {
    snprintf(why, why_len, "unknown key");
    return KMS_ERR_CONFIG;
  }
  if (strlen(value) >= cap) {
    snprintf(why, why_len, "path too long");
    return KMS_ERR_CONFIG;
  }
  memcpy(dst, value, strlen(value) + 1);
  return KMS_OK;
}

static SSL_CTX *
client_ctx(const char *path, struct client_conf *cc)
{
  char err[512];
  memset(cc, 0, sizeof(*cc));
  if (kms_conf_parse(path, on_client_entry, cc, err, sizeof(err)) != KMS_OK) {
    fprintf(stderr, "kms-bench: %s\n", err);
    return NULL;
  }
  if (cc->host[0] == '\0' || cc->ca[0] == '\0' || cc->cert[0] == '\0' || cc->key[0] == '\0') {
    fprintf(stderr, "kms-bench: %s: endpoint, ca, cert and key are required\n", path);
    return NULL;
  }
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == NULL) {
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (SSL_CTX_load_verify_locations(ctx, cc->ca, NULL) != 1 ||
      SSL_CTX_use_certificate_chain_file(ctx, cc->cert) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, cc->key, SSL_FILETYPE_PEM) != 1) {
    ERR_error_string_n(ERR_peek_last_error(), err, sizeof(err));
    fprintf(stderr, "kms-bench: %s: loading TLS material: %s\n", path, err);
    SSL_CTX_free(ctx);
    return NULL;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  return ctx;
}

/* Parses "generate=3,decrypt=1" into a table of op codes drawn uniformly. */
static int
parse_mix(const char *spec, uint8_t *mix, size_t *mix_n)
{
  char buf[256];
  if (strlen(spec) >= sizeof(buf)) {
    fprintf(stderr, "kms-bench: --mix too long\n");
    return -1;
  }
  memcpy(buf, spec, strlen(spec) + 1);
  *mix_n = 0;
  char *save = NULL;
  for (char *tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(tok, '=');
    unsigned long w = 1;
    if (eq != NULL) {
      *eq = '\0';
      char *end = NULL;
      errno = 0;
      w = strtoul(eq + 1, &end, 10);
      if (errno != 0 || end == eq + 1 || *end != '\0' || w > 100) {
        fprintf(stderr, "kms-bench: --mix: weight of %s must be 0-100\n", tok);
        return -1;
      }
    }
    int op;
    if (strcmp(tok, "generate") == 0) {
      op = BOP_GENERATE;
    } else if (strcmp(tok, "decrypt") == 0) {
      op = BOP_DECRYPT;
    } else if (strcmp(tok, "re-encrypt") == 0) {
      op = BOP_REENCRYPT;
    } else if (strcmp(tok, "session-get") == 0) {
      op = BOP_SESSION_GET;
    } else {
      fprintf(stderr,
              "kms-bench: --mix: unknown operation '%s' (generate, decrypt, re-encrypt, "
              "session-get)\n",
              tok);
      return -1;
    }
    for (unsigned long i = 0; i < w; i++) {
      if (*mix_n >= MIX_MAX) {
        fprintf(stderr, "kms-bench: --mix: weights add up to more than %d\n", MIX_MAX);
        return -1;
      }
      mix[(*mix_n)++] = (uint8_t)op;
    }
  }
  if (*mix_n == 0) {
    fprintf(stderr, "kms-bench: --mix: nothing to do\n");
    return -1;
  }
  return 0;
}

static int
mix_has(const uint8_t *mix, size_t n, int op)
{
  for (size_t i = 0; i < n; i++) {
    if (mix[i] == op) {
      return 1;
    }
  }
  return 0;
}

/* ---- Output ------------------------------------------------------------------------ */

static double
ops_per_s(const struct load_result *r)
{
  uint64_t n = 0;
  for (int op = 0; op < BOP_COUNT_; op++) {
    n += r->ok[op];
  }
  return r->window_s > 0 ? (double)n / r->window_s : 0;
}

static uint64_t
errors_of(const struct load_result *r)
{
  uint64_t n = r->mismatches;
  for (int op = 0; op < BOP_COUNT_; op++) {
    n += r->errors[op];
  }
  return n;
}

static void
print_row(const char *name, double rate, const struct bench_hist *h, uint64_t errs,
          double ccpu, double scpu, double window)
{
  char sc[32] = "-";
  if (scpu > 0 && rate > 0) {
    snprintf(sc, sizeof(sc), "%.1f", scpu / (rate * window) * 1e6);
  }
  printf("%-22s %10.0f %9.3f %9.3f %9.3f %9.3f %7llu %8.0f%% %9s\n", name, rate,
         (double)hist_quantile(h, 0.5) / 1e6, (double)hist_quantile(h, 0.99) / 1e6,
         (double)hist_quantile(h, 0.999) / 1e6, (double)h->max_ns / 1e6,
         (unsigned long long)errs, window > 0 ? 100.0 * ccpu / window : 0, sc);
}

static void
json_hist(FILE *f, const char *key, const struct bench_hist *h)
{
  fprintf(f, "\"%s\":{\"n\":%llu,\"mean_ms\":%.4f,\"p50_ms\":%.4f,\"p99_ms\":%.4f,"
         "\"p999_ms\":%.4f,\"max_ms\":%.4f}",
         key, (unsigned long long)h->n, h->n > 0 ? h->sum_ns / (double)h->n / 1e6 : 0,
         (double)hist_quantile(h, 0.5) / 1e6, (double)hist_quantile(h, 0.99) / 1e6,
         (double)hist_quantile(h, 0.999) / 1e6, (double)h->max_ns / 1e6);
}

static void json_rounds(FILE *f, const double *v, unsigned n);

static void
json_load(FILE *f, const struct phase *p, const double *rounds, unsigned n_rounds)
{
  const struct load_result *r = &p->res;
  fprintf(f, "\"%s\":{\"ops_per_s\":%.1f,\"window_s\":%.3f,\"errors\":%llu,\"mismatches\":%llu,"
         "\"late_sends\":%llu,\"client_cpu_s\":%.3f,\"server_cpu_s\":%.3f,",
         p->name, ops_per_s(r), r->window_s, (unsigned long long)errors_of(r),
         (unsigned long long)r->mismatches, (unsigned long long)r->late, r->client_cpu_s,
         r->server_cpu_s);
  json_hist(f, "latency", &r->all);
  for (int op = 0; op < BOP_COUNT_; op++) {
    if (r->ok[op] + r->errors[op] > 0) {
      fprintf(f, ",\"%s\":{\"ok\":%llu,\"errors\":%llu,", bench_op_name(op),
             (unsigned long long)r->ok[op], (unsigned long long)r->errors[op]);
      json_hist(f, "latency", &r->hist[op]);
      fprintf(f, "}");
    }
  }
  fprintf(f, ",\"first_error\":\"");
  for (const char *s = r->first_error; *s != '\0'; s++) {
    if (*s == '"' || *s == '\\') {
      fputc('\\', f);
    }
    fputc((unsigned char)*s >= 0x20 ? *s : ' ', f);
  }
  fprintf(f, "\"");
  json_rounds(f, rounds, n_rounds);
  fprintf(f, "}");
}

/* ---- Phases --------------------------------------------------------------------------- */

static int
run_phase(const struct opts *o, struct load_cfg *lc, struct phase *p, const char *name)
{
  char err[256];
  p->name = name;
  if (!o->json) {
    fprintf(stderr, "kms-bench: %s: %u connections x %u in flight%s, %.0f s ...\n", name,
            lc->conns, lc->inflight, lc->rate > 0 ? " (cap), open loop" : "", lc->duration_s);
  }
  if (load_run(lc, &p->res, err, sizeof(err)) != 0) {
    fprintf(stderr, "kms-bench: %s: %s\n", name, err);
    return -1;
  }
  p->ran = 1;
  return 0;
}

/* Count mode: one request of |op| per tenant, pipelined, before the window; any error aborts. */
static int
prefill(const struct load_cfg *base, const struct opts *o, int op, const char *what)
{
  char err[256] = "";
  struct load_cfg lc = *base;
  struct load_result *res = calloc(1, sizeof(*res));
  if (res == NULL) {
    fprintf(stderr, "kms-bench: out of memory\n");
    return -1;
  }
  lc.threads = 1;
  lc.inflight = o->inflight > 32 ? o->inflight : 32;
  lc.conns = o->conns < 8 ? o->conns : 8;
  lc.rate = 0;
  lc.count_mode = true;
  lc.count_op = op;
  lc.server_pid = 0;
  if (!o->json) {
    fprintf(stderr, "kms-bench: %s (%u) ...\n", what, o->tenants);
  }
  int r = 0;
  if (load_run(&lc, res, err, sizeof(err)) != 0 || res->errors[op] > 0 ||
      res->mismatches > 0 || res->ok[op] != o->tenants) {
    fprintf(stderr, "kms-bench: %s: %s%s%s (%llu ok, %llu errors, %llu mismatches)\n", what,
            err, err[0] != '\0' && res->first_error[0] != '\0' ? "; " : "", res->first_error,
            (unsigned long long)res->ok[op], (unsigned long long)res->errors[op],
            (unsigned long long)res->mismatches);
    r = -1;
  }
  free(res);
  return r;
}

static double
hsm_ops_per_s(const struct hsm_bench_result *h)
{
  uint64_t n = 0;
  for (int op = 0; op < BOP_COUNT_; op++) {
    n += h->ok[op];
  }
  return h->window_s > 0 ? (double)n / h->window_s : 0;
}

/* The index of the median of |v| (the lower middle one for an even |n|). */
static unsigned
pick_median(const double *v, unsigned n)
{
  unsigned idx[ROUNDS_MAX];
  for (unsigned i = 0; i < n; i++) {
    idx[i] = i;
  }
  for (unsigned i = 1; i < n; i++) { /* insertion sort: n <= ROUNDS_MAX */
    for (unsigned j = i; j > 0 && v[idx[j - 1]] > v[idx[j]]; j--) {
      unsigned t = idx[j];
      idx[j] = idx[j - 1];
      idx[j - 1] = t;
    }
  }
  return idx[(n - 1) / 2];
}

static double
max_of(const double *v, unsigned n)
{
  double m = 0;
  for (unsigned i = 0; i < n; i++) {
    m = v[i] > m ? v[i] : m;
  }
  return m;
}

static size_t
mix_distinct(const uint8_t *mix, size_t n)
{
  size_t k = 0;
  for (int op = 0; op < BOP_COUNT_; op++) {
    k += (size_t)mix_has(mix, n, op);
  }
  return k;
}

/* ,"rounds":{...} with every round's ops/s, the median and the best (only with --rounds > 1). */
static void
json_rounds(FILE *f, const double *v, unsigned n)
{
  if (n <= 1) {
    return;
  }
  fprintf(f, ",\"rounds\":{\"n\":%u,\"ops_per_s\":[", n);
  for (unsigned i = 0; i < n; i++) {
    fprintf(f, "%s%.1f", i > 0 ? "," : "", v[i]);
  }
  fprintf(f, "],\"median\":%.1f,\"best\":%.1f}", v[pick_median(v, n)], max_of(v, n));
}

static void
print_rounds(const char *name, const double *v, unsigned n, int ran)
{
  if (!ran) {
    return;
  }
  printf("%s rounds, ops/s:", name);
  for (unsigned i = 0; i < n; i++) {
    printf(" %.0f", v[i]);
  }
  printf("; median %.0f, best %.0f\n", v[pick_median(v, n)], max_of(v, n));
}

static void
print_aead(const struct aead_bench_row *aead, int env, const char *session)
{
  printf("\nAEAD, one thread, MB/s (best of 5, thread CPU time)\n");
  printf("%-9s %12s %12s %12s %12s %10s %10s", "size", "EVP fresh", "EVP reuse",
         "cob encrypt", "cob decrypt", "enc/fresh", "enc/reuse");
  if (env) {
    printf(" %10s %10s %10s %10s %10s", "seal", "open*", "str seal", "str open*",
           "seal/fresh");
  }
  printf("\n");
  for (int i = 0; i < 4; i++) {
    char sz[32];
    if (aead[i].size >= (1u << 20)) {
      snprintf(sz, sizeof(sz), "%zu MiB", aead[i].size >> 20);
    } else {
      snprintf(sz, sizeof(sz), "%zu KiB", aead[i].size >> 10);
    }
    printf("%-9s %12.0f %12.0f %12.0f %12.0f %9.0f%% %9.0f%%", sz, aead[i].raw_fresh_mbs,
           aead[i].raw_reuse_mbs, aead[i].cob_enc_mbs, aead[i].cob_dec_mbs,
           100.0 * aead[i].cob_enc_mbs / aead[i].raw_fresh_mbs,
           100.0 * aead[i].cob_enc_mbs / aead[i].raw_reuse_mbs);
    if (env) {
      printf(" %10.0f %10.0f %10.0f %10.0f %9.0f%%", aead[i].seal_mbs, aead[i].open_mbs,
             aead[i].stream_seal_mbs, aead[i].stream_open_mbs,
             100.0 * aead[i].seal_mbs / aead[i].raw_fresh_mbs);
    }
    printf("\n");
  }
  if (env) {
    printf("seal: tk_seal_session; str seal: tk_stream_seal_session_new, 64 KiB updates. The\n"
           "library has no local-key tk_seal, so the key is session %s's, fetched once\n"
           "from kmsd (OpenSession); sealing then makes no round trip. * open, str open:\n"
           "tk_open / tk_stream_open_new ask kmsd for the key (GetSessionKey) on every\n"
           "envelope, so they are timed by the wall clock, round trip included.\n",
           session);
  } else {
    printf("envelope API (tk_seal_session, tk_open, tk_stream_*) not measured: it needs a key\n"
           "from kmsd (--config)\n");
  }
}

int
main(int argc, char **argv)
{
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'C'},
      {"kmsd-config", required_argument, NULL, 'K'},
      {"officer-config", required_argument, NULL, 'O'},
      {"connections", required_argument, NULL, 'c'},
      {"inflight", required_argument, NULL, 'm'},
      {"duration", required_argument, NULL, 'd'},
      {"warmup", required_argument, NULL, 'w'},
      {"mix", required_argument, NULL, 'x'},
      {"rate", required_argument, NULL, 'r'},
      {"tenants", required_argument, NULL, 'n'},
      {"tenant-prefix", required_argument, NULL, 'p'},
      {"create-tenants", no_argument, NULL, 'T'},
      {"threads", required_argument, NULL, 't'},
      {"baseline-tls", no_argument, NULL, 'L'},
      {"baseline-hsm", no_argument, NULL, 'H'},
      {"hsm-threads", required_argument, NULL, 'W'},
      {"baseline-aead", no_argument, NULL, 'A'},
      {"aead-seconds", required_argument, NULL, 'a'},
      {"no-kmsd", no_argument, NULL, 'N'},
      {"no-verify", no_argument, NULL, 'V'},
      {"kmsd-pid", required_argument, NULL, 'P'},
      {"label", required_argument, NULL, 'l'},
      {"json", no_argument, NULL, 'J'},
      {"json-out", required_argument, NULL, 'j'},
      {"context", required_argument, NULL, 'X'},
      {"rounds", required_argument, NULL, 'R'},
      {"purpose", required_argument, NULL, 'U'},
      {"session-prefix", required_argument, NULL, 'S'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct opts o = {
      .conns = 16, .inflight = 8, .threads = 1, .tenants = 1, .duration = 10, .warmup = 1,
      .mix_spec = "generate", .tenant_prefix = "bench-", .verify = 1, .aead_secs = 2,
      .rounds = 1, .purpose = "recording",
  };
  char default_session_prefix[64];
  snprintf(default_session_prefix, sizeof(default_session_prefix), "kb-%llx-%d-",
           (unsigned long long)time(NULL), (int)getpid());
  o.session_prefix = default_session_prefix;
  int opt;
  while ((opt = getopt_long(argc, argv, "c:m:d:h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'C':
      o.config = optarg;
      break;
    case 'K':
      o.kmsd_config = optarg;
      break;
    case 'O':
      o.officer_config = optarg;
      break;
    case 'c':
      o.conns = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'm':
      o.inflight = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'd':
      o.duration = strtod(optarg, NULL);
      break;
    case 'w':
      o.warmup = strtod(optarg, NULL);
      break;
    case 'x':
      o.mix_spec = optarg;
      break;
    case 'r':
      o.rate = strtod(optarg, NULL);
      break;
    case 'n':
      o.tenants = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'p':
      o.tenant_prefix = optarg;
      break;
    case 'T':
      o.create_tenants = 1;
      break;
    case 't':
      o.threads = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'L':
      o.baseline_tls = 1;
      break;
    case 'H':
      o.baseline_hsm = 1;
      break;
    case 'W':
      o.hsm_threads = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'A':
      o.baseline_aead = 1;
      break;
    case 'a':
      o.aead_secs = strtod(optarg, NULL);
      break;
    case 'N':
      o.no_kmsd = 1;
      break;
    case 'V':
      o.verify = 0;
      break;
    case 'P':
      o.kmsd_pid = (pid_t)strtol(optarg, NULL, 10);
      break;
    case 'l':
      o.label = optarg;
      break;
    case 'J':
      o.json = 1;
      break;
    case 'j':
      o.json_out = optarg;
      break;
    case 'X': {
      char *eq = strchr(optarg, '=');
      if (o.n_ctx >= 4 || eq == NULL || eq == optarg || strlen(optarg) >= sizeof(o.ctx_buf[0])) {
        fprintf(stderr, "kms-bench: --context KEY=VALUE, at most 4\n");
        return 2;
      }
      char *b = o.ctx_buf[o.n_ctx];
      memcpy(b, optarg, strlen(optarg) + 1);
      b[eq - optarg] = '\0';
      tkms__context_entry__init(&o.ctx_entries[o.n_ctx]);
      o.ctx_entries[o.n_ctx].key = b;
      o.ctx_entries[o.n_ctx].value = b + (eq - optarg) + 1;
      o.ctx[o.n_ctx] = &o.ctx_entries[o.n_ctx];
      o.n_ctx++;
      break;
    }
    case 'R':
      o.rounds = (unsigned)strtoul(optarg, NULL, 10);
      break;
    case 'U':
      o.purpose = optarg;
      break;
    case 'S':
      o.session_prefix = optarg;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (optind != argc || o.conns == 0 || o.conns > 100000 || o.inflight == 0 ||
      o.inflight > 4096 || o.threads == 0 || o.threads > 64 || o.tenants == 0 ||
      o.tenants > 10000000 || o.duration <= 0 || o.warmup < 0 || o.rate < 0 ||
      strlen(o.tenant_prefix) > 56 || o.rounds == 0 || o.rounds > ROUNDS_MAX ||
      strlen(o.session_prefix) == 0 || strlen(o.session_prefix) > 100 ||
      strlen(o.purpose) > 256) {
    usage(stderr);
    return 2;
  }
  uint8_t mix[MIX_MAX];
  size_t mix_n = 0;
  if (parse_mix(o.mix_spec, mix, &mix_n) != 0) {
    return 2;
  }
  int need_rpc = !o.no_kmsd || o.baseline_tls || o.create_tenants;
  if (need_rpc && o.config == NULL) {
    fprintf(stderr, "kms-bench: --config is required\n");
    return 2;
  }
  if ((o.baseline_tls || o.baseline_hsm) && o.kmsd_config == NULL) {
    fprintf(stderr, "kms-bench: --baseline-tls and --baseline-hsm need --kmsd-config\n");
    return 2;
  }
  if (o.create_tenants && o.officer_config == NULL) {
    fprintf(stderr, "kms-bench: --create-tenants needs --officer-config\n");
    return 2;
  }

  /* 1,000 connections need more descriptors than the usual soft limit. */
  struct rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &nofile);
  }
  int rc = 1;
  struct kmsd_config kcfg;
  char err[512] = "";
  SSL_CTX *ctx = NULL, *officer_ctx = NULL;
  struct client_conf cc, occ;
  struct bench_blob *blobs = NULL, *sessions = NULL, *rewrapped = NULL;
  pid_t echo_pid = -1;
  /* Per round; the reported phase is the median round (see pick_median). */
  struct phase *tls_rounds = NULL, *kmsd_rounds = NULL;
  struct hsm_bench_result *hsm_rounds = NULL;
  struct aead_bench_row aead[4];
  int hsm_ran = 0, aead_ran = 0, aead_env = 0;
  double create_s = 0, create_rate = 0;
  uint64_t created = 0;
  long rss_kb = -1, hwm_kb = -1;
  uint64_t errors_all_rounds = 0;
  char aead_session[160] = "";

  if (o.kmsd_config != NULL && config_load(&kcfg, o.kmsd_config, err, sizeof(err)) != KMS_OK) {
    fprintf(stderr, "kms-bench: %s\n", err);
    return 1;
  }
  /* The TLS echo server is forked before any thread exists. */
  unsigned echo_port = 0;
  if (o.baseline_tls &&
      echo_server_start(&kcfg, &echo_pid, &echo_port, err, sizeof(err)) != 0) {
    fprintf(stderr, "kms-bench: %s\n", err);
    return 1;
  }
  if (need_rpc && (ctx = client_ctx(o.config, &cc)) == NULL) {
    goto out;
  }
  blobs = calloc(o.tenants, sizeof(*blobs));
  sessions = calloc(o.tenants, sizeof(*sessions));
  tls_rounds = calloc(o.rounds, sizeof(*tls_rounds));
  kmsd_rounds = calloc(o.rounds, sizeof(*kmsd_rounds));
  hsm_rounds = calloc(o.rounds, sizeof(*hsm_rounds));
  if (blobs == NULL || sessions == NULL || tls_rounds == NULL || kmsd_rounds == NULL ||
      hsm_rounds == NULL) {
    fprintf(stderr, "kms-bench: out of memory\n");
    goto out;
  }
  struct load_cfg base = {
      .host = need_rpc ? cc.host : "",
      .port = need_rpc ? cc.port : "",
      .ctx = ctx,
      .conns = o.conns,
      .inflight = o.inflight,
      .threads = o.threads,
      .warmup_s = o.warmup,
      .duration_s = o.duration,
      .rate = o.rate,
      .mix = mix,
      .mix_n = mix_n,
      .tenants = o.tenants,
      .tenant_prefix = o.tenant_prefix,
      .blobs = blobs,
      .sessions = sessions,
      .verify = o.verify != 0,
      .context = o.n_ctx > 0 ? o.ctx : NULL,
      .n_context = o.n_ctx,
      .session_prefix = o.session_prefix,
      .purpose = o.purpose,
  };

  if (o.create_tenants) {
    if ((officer_ctx = client_ctx(o.officer_config, &occ)) == NULL) {
      goto out;
    }
    struct load_cfg lc = base;
    struct load_result res;
    lc.host = occ.host;
    lc.port = occ.port;
    lc.ctx = officer_ctx;
    lc.conns = o.conns < 8 ? o.conns : 8;
    lc.threads = 1;
    lc.inflight = 32;
    lc.rate = 0;
    lc.count_mode = true;
    lc.count_op = BOP_CREATE_TENANT;
    if (!o.json) {
      fprintf(stderr, "kms-bench: creating %u tenants ...\n", o.tenants);
    }
    if (load_run(&lc, &res, err, sizeof(err)) != 0) {
      fprintf(stderr, "kms-bench: creating tenants: %s\n", err);
      goto out;
    }
    if (res.errors[BOP_CREATE_TENANT] > 0) {
      fprintf(stderr, "kms-bench: creating tenants: %llu failed (%s)\n",
              (unsigned long long)res.errors[BOP_CREATE_TENANT], res.first_error);
      goto out;
    }
    created = res.ok[BOP_CREATE_TENANT];
    create_s = res.window_s;
    create_rate = create_s > 0 ? (double)created / create_s : 0;
  }
  int want_blobs = mix_has(mix, mix_n, BOP_DECRYPT) || mix_has(mix, mix_n, BOP_REENCRYPT);
  if (want_blobs && !o.no_kmsd) {
    /* One wrapped key per tenant to decrypt or re-encrypt, generated up front (pipelined). */
    if (prefill(&base, &o, BOP_GENERATE, "generating keys to decrypt or re-encrypt") != 0) {
      goto out;
    }
  } else if (want_blobs) {
    for (unsigned i = 0; i < o.tenants; i++) {
      blobs[i].wrapped_len = 65;
      blobs[i].wrapped[0] = 1;
      blobs[i].kek_version = 1;
    }
  }
  if (mix_has(mix, mix_n, BOP_REENCRYPT) && !o.no_kmsd && o.verify) {
    /*
     * ReEncrypt returns no plaintext, so the window can only check versions.
     * Once per tenant before it: re-encrypt the key and decrypt the result,
     * which must give the key generated above (this needs Decrypt too).
     */
    rewrapped = calloc(o.tenants, sizeof(*rewrapped));
    if (rewrapped == NULL) {
      fprintf(stderr, "kms-bench: out of memory\n");
      goto out;
    }
    struct load_cfg lc = base;
    lc.rewrapped = rewrapped;
    if (prefill(&lc, &o, BOP_REENCRYPT, "re-encrypting each tenant's key once") != 0) {
      goto out;
    }
    lc.blobs = rewrapped;
    if (prefill(&lc, &o, BOP_DECRYPT, "decrypting each re-encrypted key (--no-verify skips)") !=
        0) {
      goto out;
    }
  }
  if (mix_has(mix, mix_n, BOP_SESSION_GET) && !o.no_kmsd) {
    /* One session per tenant, opened up front; GetSessionKey reads them in the window. */
    if (prefill(&base, &o, BOP_OPEN_SESSION, "opening one session per tenant") != 0) {
      goto out;
    }
  }

  /* Rounds: the phases interleaved, so each round's phases share the machine's mood. */
  for (unsigned rd = 0; rd < o.rounds; rd++) {
    if (o.rounds > 1 && !o.json) {
      fprintf(stderr, "kms-bench: round %u of %u\n", rd + 1, o.rounds);
    }
    if (o.baseline_tls) {
      struct load_cfg lc = base;
      char port[8];
      snprintf(port, sizeof(port), "%u", echo_port);
      lc.host = "127.0.0.1";
      lc.port = port;
      lc.verify = false;
      lc.server_pid = echo_pid;
      if (run_phase(&o, &lc, &tls_rounds[rd], "baseline-tls") != 0) {
        goto out;
      }
      errors_all_rounds += errors_of(&tls_rounds[rd].res);
    }
    if (!o.no_kmsd) {
      struct load_cfg lc = base;
      lc.server_pid = o.kmsd_pid;
      if (run_phase(&o, &lc, &kmsd_rounds[rd], "kmsd") != 0) {
        goto out;
      }
      errors_all_rounds += errors_of(&kmsd_rounds[rd].res);
    }
    if (o.baseline_hsm) {
      unsigned n = o.hsm_threads > 0 ? o.hsm_threads : kcfg.workers;
      if (!o.json) {
        fprintf(stderr, "kms-bench: baseline-hsm: %u threads, %.0f s ...\n", n, o.duration);
      }
      if (hsm_bench_run(&kcfg, n, kcfg.hsm_latency_us, mix, mix_n, o.warmup, o.duration,
                        &hsm_rounds[rd], err, sizeof(err)) != 0) {
        fprintf(stderr, "kms-bench: %s\n", err);
        goto out;
      }
      hsm_ran = 1;
    }
  }
  if (echo_pid > 0) {
    echo_server_stop(echo_pid);
    echo_pid = -1;
  }
  double tls_all[ROUNDS_MAX], kmsd_all[ROUNDS_MAX], hsm_all[ROUNDS_MAX];
  for (unsigned rd = 0; rd < o.rounds; rd++) {
    tls_all[rd] = tls_rounds[rd].ran ? ops_per_s(&tls_rounds[rd].res) : 0;
    kmsd_all[rd] = kmsd_rounds[rd].ran ? ops_per_s(&kmsd_rounds[rd].res) : 0;
    hsm_all[rd] = hsm_ran ? hsm_ops_per_s(&hsm_rounds[rd]) : 0;
  }
  unsigned tls_med = pick_median(tls_all, o.rounds), kmsd_med = pick_median(kmsd_all, o.rounds);
  unsigned hsm_med = pick_median(hsm_all, o.rounds);
  const struct phase *tls_phase = &tls_rounds[tls_med], *kmsd_phase = &kmsd_rounds[kmsd_med];
  const struct hsm_bench_result *hsm_res = &hsm_rounds[hsm_med];
  if (kmsd_phase->ran) {
    rss_kb = kmsd_phase->res.server_rss_kb;
    hwm_kb = kmsd_phase->res.server_hwm_kb;
  }
  if (o.baseline_aead) {
    struct aead_env_cfg env = {0};
    char tenant0[96];
    aead_env = o.config != NULL; /* with --no-kmsd too: the kmsd is still there */
    if (aead_env) {
      snprintf(tenant0, sizeof(tenant0), "%s%07u", o.tenant_prefix, 0u);
      snprintf(aead_session, sizeof(aead_session), "%saead", o.session_prefix);
      env.client_config = o.config;
      env.tenant = tenant0;
      env.session_id = aead_session;
      env.purpose = o.purpose;
    }
    if (!o.json) {
      fprintf(stderr, "kms-bench: baseline-aead: %.1f CPU s per cell%s ...\n", o.aead_secs,
              aead_env ? ", envelope API too" : "");
    }
    if (aead_bench_run(aead, o.aead_secs, aead_env ? &env : NULL, err, sizeof(err)) != 0) {
      fprintf(stderr, "kms-bench: %s\n", err);
      goto out;
    }
    aead_ran = 1;
  }

  double hsm_rate = hsm_ran ? hsm_ops_per_s(hsm_res) : 0;
  double kr = kmsd_phase->ran ? ops_per_s(&kmsd_phase->res) : 0;
  double tr = tls_phase->ran ? ops_per_s(&tls_phase->res) : 0;
  double kr_best = max_of(kmsd_all, o.rounds), tr_best = max_of(tls_all, o.rounds);
  double hsm_best = max_of(hsm_all, o.rounds);

  FILE *jf = o.json ? stdout : NULL;
  if (jf == NULL && o.json_out != NULL && (jf = fopen(o.json_out, "a")) == NULL) {
    fprintf(stderr, "kms-bench: cannot write %s\n", o.json_out);
  }
  if (jf != NULL) {
    fprintf(jf, "{\"label\":\"%s\",\"params\":{\"connections\":%u,\"inflight\":%u,\"threads\":%u,"
           "\"duration_s\":%.1f,\"warmup_s\":%.1f,\"rate\":%.0f,\"mix\":\"%s\",\"tenants\":%u,"
           "\"rounds\":%u},",
           o.label != NULL ? o.label : "", o.conns, o.inflight, o.threads, o.duration,
           o.warmup, o.rate, o.mix_spec, o.tenants, o.rounds);
    if (o.create_tenants) {
      fprintf(jf, "\"create_tenants\":{\"tenants\":%llu,\"seconds\":%.3f,\"per_s\":%.1f},",
             (unsigned long long)created, create_s, create_rate);
    }
    if (tls_phase->ran) {
      json_load(jf, tls_phase, tls_all, o.rounds);
      fprintf(jf, ",");
    }
    if (kmsd_phase->ran) {
      json_load(jf, kmsd_phase, kmsd_all, o.rounds);
      fprintf(jf, ",");
    }
    if (hsm_ran) {
      fprintf(jf, "\"baseline-hsm\":{\"ops_per_s\":%.1f,\"threads\":%u,\"latency_us\":%u,"
             "\"cpu_s\":%.3f,",
             hsm_rate, hsm_res->threads, kcfg.hsm_latency_us, hsm_res->cpu_s);
      json_hist(jf, "latency", &hsm_res->all);
      json_rounds(jf, hsm_all, o.rounds);
      fprintf(jf, "},");
    }
    if (aead_ran) {
      fprintf(jf, "\"baseline-aead\":[");
      for (int i = 0; i < 4; i++) {
        fprintf(jf, "%s{\"size\":%zu,\"raw_fresh_mbs\":%.0f,\"raw_reuse_mbs\":%.0f,"
               "\"cob_encrypt_mbs\":%.0f,\"cob_decrypt_mbs\":%.0f",
               i > 0 ? "," : "", aead[i].size, aead[i].raw_fresh_mbs, aead[i].raw_reuse_mbs,
               aead[i].cob_enc_mbs, aead[i].cob_dec_mbs);
        if (aead_env) {
          fprintf(jf, ",\"seal_mbs\":%.0f,\"open_mbs\":%.0f,\"stream_seal_mbs\":%.0f,"
                 "\"stream_open_mbs\":%.0f",
                 aead[i].seal_mbs, aead[i].open_mbs, aead[i].stream_seal_mbs,
                 aead[i].stream_open_mbs);
        }
        fprintf(jf, "}");
      }
      /* How the envelope columns were measured, for whoever reads the JSON later. */
      fprintf(jf, "],\"baseline-aead-envelope\":{\"measured\":%s,\"key\":\"%s\","
             "\"seal_timing\":\"thread cpu\",\"open_timing\":\"wall, one GetSessionKey per "
             "envelope\"},",
             aead_env ? "true" : "false",
             aead_env ? "one OpenSession before the trials (tk_seal_session)" : "none");
    }
    if (rss_kb > 0) {
      fprintf(jf, "\"kmsd_rss_kb\":%ld,\"kmsd_hwm_kb\":%ld,", rss_kb, hwm_kb);
    }
    fprintf(jf, "\"ratios\":{\"kmsd_over_tls\":%.3f,\"kmsd_over_hsm\":%.3f",
           tr > 0 ? kr / tr : 0, hsm_rate > 0 ? kr / hsm_rate : 0);
    if (o.rounds > 1) {
      fprintf(jf, ",\"kmsd_over_tls_best\":%.3f,\"kmsd_over_hsm_best\":%.3f",
             tr_best > 0 ? kr_best / tr_best : 0, hsm_best > 0 ? kr_best / hsm_best : 0);
    }
    fprintf(jf, "}}\n");
    if (jf != stdout) {
      fclose(jf);
    }
  }
  if (!o.json) {
    if (o.label != NULL) {
      printf("== %s\n", o.label);
    }
    printf("mix %s, %u tenants, %u connections x %u in flight%s, %u client thread(s), "
           "%.0f s measured\n",
           o.mix_spec, o.tenants, o.conns, o.inflight, o.rate > 0 ? " (cap)" : "", o.threads,
           o.duration);
    if (o.rounds > 1) {
      printf("%u rounds, phases interleaved; each row is that phase's median round "
             "(lower middle if even)\n", o.rounds);
    }
    if (o.rate > 0) {
      printf("open loop at %.0f requests/s (latency from the scheduled send time)\n", o.rate);
    }
    if (o.create_tenants) {
      printf("created %llu tenants in %.1f s (%.0f/s)\n", (unsigned long long)created,
             create_s, create_rate);
    }
    if (tls_phase->ran || kmsd_phase->ran || hsm_ran) {
      printf("%-22s %10s %9s %9s %9s %9s %7s %9s %9s\n", "phase", "ops/s", "p50 ms", "p99 ms",
             "p99.9 ms", "max ms", "errors", "cli CPU", "srv us/op");
    }
    if (tls_phase->ran) {
      const struct load_result *r = &tls_phase->res;
      print_row("baseline-tls", ops_per_s(r), &r->all, errors_of(r), r->client_cpu_s,
                r->server_cpu_s, r->window_s);
    }
    if (kmsd_phase->ran) {
      const struct load_result *r = &kmsd_phase->res;
      print_row("kmsd", ops_per_s(r), &r->all, errors_of(r), r->client_cpu_s, r->server_cpu_s,
                r->window_s);
      for (int op = 0; op < BOP_COUNT_ && mix_distinct(mix, mix_n) > 1; op++) {
        if (r->ok[op] + r->errors[op] > 0) {
          char name[40];
          snprintf(name, sizeof(name), "  kmsd %s", bench_op_name(op));
          print_row(name, (double)r->ok[op] / r->window_s, &r->hist[op], r->errors[op], 0, 0,
                    r->window_s);
        }
      }
    }
    if (hsm_ran) {
      char name[40];
      snprintf(name, sizeof(name), "baseline-hsm (%u thr)", hsm_res->threads);
      print_row(name, hsm_rate, &hsm_res->all, 0, hsm_res->cpu_s, 0, hsm_res->window_s);
    }
    if (o.rounds > 1) {
      print_rounds("baseline-tls", tls_all, o.rounds, tls_phase->ran);
      print_rounds("kmsd", kmsd_all, o.rounds, kmsd_phase->ran);
      print_rounds("baseline-hsm", hsm_all, o.rounds, hsm_ran);
      if (errors_all_rounds > 0) {
        printf("errors over all rounds: %llu\n", (unsigned long long)errors_all_rounds);
      }
    }
    if (kmsd_phase->ran && errors_of(&kmsd_phase->res) > 0) {
      printf("first error: %s\n", kmsd_phase->res.first_error);
    }
    if (kmsd_phase->ran && kmsd_phase->res.late > 0) {
      printf("warning: %llu sends left more than 1 ms after their schedule (client saturated?)\n",
             (unsigned long long)kmsd_phase->res.late);
    }
    if (tr > 0 && kr > 0) {
      printf("kmsd / baseline-tls: %.1f%%", 100.0 * kr / tr);
      if (o.rounds > 1) {
        printf(" (medians; best / best %.1f%%)", 100.0 * kr_best / tr_best);
      }
      printf("\n");
    }
    if (hsm_rate > 0 && kr > 0) {
      printf("kmsd / baseline-hsm: %.1f%%", 100.0 * kr / hsm_rate);
      if (o.rounds > 1) {
        printf(" (medians; best / best %.1f%%)", 100.0 * kr_best / hsm_best);
      }
      printf("\n");
    }
    if (rss_kb > 0) {
      printf("kmsd memory at the end of the window: VmRSS %.1f MiB, VmHWM %.1f MiB\n",
             (double)rss_kb / 1024, (double)hwm_kb / 1024);
    }
    if (aead_ran) {
      print_aead(aead, aead_env, aead_session);
    }
  }
  rc = 0;
  if (errors_all_rounds > 0) {
    rc = 3;
  }
out:
  if (echo_pid > 0) {
    echo_server_stop(echo_pid);
  }
  free(blobs);
  free(sessions);
  free(rewrapped);
  free(tls_rounds);
  free(kmsd_rounds);
  free(hsm_rounds);
  SSL_CTX_free(ctx);
  SSL_CTX_free(officer_ctx);
  return rc;
}
