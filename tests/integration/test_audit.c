/* Integration tests of the audit log: real kmsd, tampering caught offline, disk full, kill -9, no
 * secrets. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "harness.h"
#include "hsm.h"
#include "kms.pb-c.h"
#include "kms_err.h"
#include "kms_frame.h"
#include "kms_merkle.h"
#include "kms_note.h"
#include "tenantkey.h"

static char g_audit[600];

/* ---- Helpers ---------------------------------------------------------------- */

static char *
slurp(const char *path, size_t *len)
{
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
  b[n] = '\0';
  fclose(f);
  *len = (size_t)n;
  return b;
}

static void
spit(const char *path, const char *b, size_t len)
{
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(b, 1, len, f), len);
  fclose(f);
}

/* log_glob returns "DIR/audit-*.jsonl" paths, space-separated, quoted, for a shell command. */
static void
log_files(char *out, size_t cap, const char *dir)
{
  out[0] = '\0';
  for (unsigned i = 1; i < 1000; i++) {
    char p[700];
    snprintf(p, sizeof(p), "%s/audit-%08u.jsonl", dir, i);
    if (access(p, F_OK) != 0) {
      break;
    }
    size_t l = strlen(out);
    snprintf(out + l, cap - l, " '%s'", p);
  }
}

/* kmsctl runs "kmsctl audit verify ..." and returns its exit status; its stdout goes to |out|. */
static int
kmsctl_verify(const char *files, const char *extra, char *out, size_t cap)
{
  char cmd[16384];
  snprintf(cmd, sizeof(cmd), "'%s' audit verify %s --key '%s/verifier-key' %s 2>&1",
           getenv("KMSCTL"), files, g_audit, extra != NULL ? extra : "");
  FILE *p = popen(cmd, "r");
  ck_assert_ptr_nonnull(p);
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* lines splits a log file into lines (pointers into |b|, newline kept). */
static size_t
lines(char *b, size_t len, char **out, size_t max)
{
  size_t n = 0;
  for (char *p = b; p < b + len && n < max;) {
    char *nl = memchr(p, '\n', (size_t)(b + len - p));
    out[n++] = p;
    p = nl != NULL ? nl + 1 : b + len;
  }
  return n;
}

static size_t
line_len(char *l)
{
  return (size_t)(strchr(l, '\n') - l) + 1;
}

/* ---- Raw pipelined requests, so the test knows every request id ---------------- */

static void
send_generate(SSL *ssl, uint64_t id, const char *tenant)
{
  Tkms__Request req = TKMS__REQUEST__INIT;
  Tkms__GenerateDataKeyRequest g = TKMS__GENERATE_DATA_KEY_REQUEST__INIT;
  Tkms__ContextEntry e = TKMS__CONTEXT_ENTRY__INIT;
  Tkms__ContextEntry *ctx[1] = {&e};
  uint8_t buf[1024];
  e.key = "session_id";
  e.value = "s-audit-it";
  g.tenant_id = (char *)tenant;
  g.context = ctx;
  g.n_context = 1;
  req.request_id = id;
  req.op_case = TKMS__REQUEST__OP_GENERATE_DATA_KEY;
  req.generate_data_key = &g;
  size_t n = protobuf_c_message_get_packed_size(&req.base);
  kms_frame_put_header(buf, (uint32_t)n);
  protobuf_c_message_pack(&req.base, buf + 4);
  (void)SSL_write(ssl, buf, (int)(n + 4));
}

static Tkms__Response *
read_response(SSL *ssl)
{
  size_t n = 0;
  uint8_t *p = harness_raw_read_frame(ssl, &n);
  if (p == NULL) {
    return NULL;
  }
  Tkms__Response *r = tkms__response__unpack(NULL, n, p);
  free(p);
  return r;
}

static int
log_has_request(const char *id_field)
{
  char files[8192];
  log_files(files, sizeof(files), g_audit);
  for (unsigned i = 1; i < 1000; i++) {
    char p[700];
    snprintf(p, sizeof(p), "%s/audit-%08u.jsonl", g_audit, i);
    if (access(p, F_OK) != 0) {
      break;
    }
    if (harness_file_contains(p, (const uint8_t *)id_field, strlen(id_field))) {
      return 1;
    }
  }
  return 0;
}

static void
create_tenant(const char *t)
{
  tk_client *officer = harness_client("officer");
  uint32_t v = 0;
  int r = tk_tenant_create(officer, &v, t);
  ck_assert_msg(r == TK_OK || r == TK_EEXIST, "create %s: %s", t, tk_strerror(r));
  tk_client_free(officer);
}

/* ---- Tests ------------------------------------------------------------------ */

/* Traffic of every kind, then every tamper case from the issue, each caught by kmsctl. */
START_TEST(test_kmsctl_catches_every_kind_of_tampering)
{
  harness_start_kmsd();
  create_tenant("acme");
  tk_client *rec = harness_client("recording");
  tk_context *ctx = tk_context_new();
  ck_assert_int_eq(tk_context_add(ctx, "session_id", "s-1"), TK_OK);
  for (int i = 0; i < 30; i++) {
    tk_data_key *k = NULL;
    ck_assert_int_eq(tk_data_key_generate(rec, &k, "acme", ctx, 1), TK_OK);
    tk_data_key_free(k);
  }
  uint32_t v;
  ck_assert_int_eq(tk_tenant_create(rec, &v, "not-allowed"), TK_EPERM); /* a denial, logged */
  tk_context_free(ctx);
  tk_client_free(rec);
  ck_assert_int_eq(harness_stop_kmsd(), 0);

  char files[8192], out[4096], log1[700], cps[700], trusted[700], tmp[700];
  log_files(files, sizeof(files), g_audit);
  ck_assert_int_eq(kmsctl_verify(files, NULL, out, sizeof(out)), 0);
  ck_assert_ptr_nonnull(strstr(out, "OK: "));

  snprintf(log1, sizeof(log1), "%s/audit-00000001.jsonl", g_audit);
  snprintf(cps, sizeof(cps), "%s/checkpoints", g_audit);
  snprintf(tmp, sizeof(tmp), "%s/tampered.jsonl", harness_dir());
  size_t len, cps_len;
  char *orig = slurp(log1, &len);
  char *cp_text = slurp(cps, &cps_len);
  /* The trusted checkpoint an auditor copied away: the last one kmsd signed. */
  size_t off = 0, start = 0, note_len = 0, used = 0, last_start = 0, last_len = 0;
  while (kms_note_next(cp_text + off, cps_len - off, &start, &note_len, &used) == KMS_OK) {
    last_start = off + start;
    last_len = note_len;
    off += used;
  }
  ck_assert_uint_gt(last_len, 0);
  snprintf(trusted, sizeof(trusted), "%s/trusted.note", harness_dir());
  spit(trusted, cp_text + last_start, last_len);
  char *ls[200];
  char *copy = malloc(len + 1);
  char extra[2048];
  snprintf(extra, sizeof(extra), "--checkpoints '%s'", cps);
  char one[800];
  snprintf(one, sizeof(one), "'%s'", tmp);

  /* 1. One changed byte in a record. */
  memcpy(copy, orig, len);
  char *t = strstr(copy + 200, "\"tenant\":\"acme\"");
  ck_assert_ptr_nonnull(t);
  t[11] = 'b';
  spit(tmp, copy, len);
  ck_assert_int_eq(kmsctl_verify(one, extra, out, sizeof(out)), 1);
  ck_assert_msg(strstr(out, "FAILED at record") && strstr(out, "altered"), "%s", out);

  /* 2. A record deleted. */
  memcpy(copy, orig, len);
  size_t n = lines(copy, len, ls, 200);
  ck_assert_uint_gt(n, 20);
  {
    char *b = malloc(len);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
      if (i != 7) {
        memcpy(b + o, ls[i], line_len(ls[i]));
        o += line_len(ls[i]);
      }
    }
    spit(tmp, b, o);
    free(b);
  }
  ck_assert_int_eq(kmsctl_verify(one, extra, out, sizeof(out)), 1);
  ck_assert_msg(strstr(out, "FAILED at record 7") && strstr(out, "removed"), "%s", out);

  /* 3. Two records swapped. */
  {
    char *b = malloc(len);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
      size_t j = i == 3 ? 4 : i == 4 ? 3 : i;
      memcpy(b + o, ls[j], line_len(ls[j]));
      o += line_len(ls[j]);
    }
    spit(tmp, b, o);
    free(b);
  }
  ck_assert_int_eq(kmsctl_verify(one, extra, out, sizeof(out)), 1);
  ck_assert_msg(strstr(out, "FAILED at record 3") && strstr(out, "reordered"), "%s", out);

  /* 4. A record inserted (a copy of record 5 after itself). */
  {
    char *b = malloc(len + 2048);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
      memcpy(b + o, ls[i], line_len(ls[i]));
      o += line_len(ls[i]);
      if (i == 5) {
        memcpy(b + o, ls[i], line_len(ls[i]));
        o += line_len(ls[i]);
      }
    }
    spit(tmp, b, o);
    free(b);
  }
  ck_assert_int_eq(kmsctl_verify(one, extra, out, sizeof(out)), 1);
  ck_assert_msg(strstr(out, "FAILED at record 6") && strstr(out, "inserted"), "%s", out);

  /* 5. The log cut short, its checkpoints too (the node is compromised): the trusted one says so.
   */
  {
    size_t keep = (size_t)(ls[n - 5] - copy);
    spit(tmp, orig, keep);
    char empty[700];
    snprintf(empty, sizeof(empty), "%s/empty-checkpoints", harness_dir());
    spit(empty, "", 0);
    char ex[2048];
    snprintf(ex, sizeof(ex), "--checkpoints '%s' --checkpoint '%s'", empty, trusted);
    ck_assert_int_eq(kmsctl_verify(one, ex, out, sizeof(out)), 1);
    ck_assert_msg(strstr(out, "cut short") && strstr(out, "trusted checkpoint"), "%s", out);
    /* And without the trusted checkpoint the shortened log alone looks fine: why auditors keep one.
     */
    snprintf(ex, sizeof(ex), "--checkpoints '%s'", empty);
    ck_assert_int_eq(kmsctl_verify(one, ex, out, sizeof(out)), 0);
  }

  /* 6. A forged checkpoint: same origin, another key. */
  {
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    uint8_t pub[32], sig[64];
    size_t pub_len = sizeof(pub), sig_len = sizeof(sig);
    struct kms_note_vkey real, fake;
    char vk[700];
    size_t vk_len;
    char *vkf;
    snprintf(vk, sizeof(vk), "%s/verifier-key", g_audit);
    vkf = slurp(vk, &vk_len);
    ck_assert_int_eq(kms_note_vkey_parse(&real, vkf, vk_len), KMS_OK);
    free(vkf);
    EVP_PKEY_get_raw_public_key(pk, pub, &pub_len);
    ck_assert_int_eq(kms_note_vkey_make(&fake, real.name, KMS_NOTE_SIG_ED25519, pub, 32), KMS_OK);
    fake.id = real.id; /* claims to be the log's key */
    struct kms_checkpoint cp;
    memset(&cp, 0, sizeof(cp));
    snprintf(cp.origin, sizeof(cp.origin), "%s", real.name);
    cp.size = 3;
    char text[256], note[1024], forged[700];
    size_t text_len, nl;
    ck_assert_int_eq(kms_checkpoint_format(text, sizeof(text), &text_len, &cp), KMS_OK);
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    EVP_DigestSignInit(mc, NULL, NULL, NULL, pk);
    EVP_DigestSign(mc, sig, &sig_len, (const uint8_t *)text, text_len);
    EVP_MD_CTX_free(mc);
    ck_assert_int_eq(kms_note_format(note, sizeof(note), &nl, text, text_len, &fake, sig, sig_len),
                     KMS_OK);
    snprintf(forged, sizeof(forged), "%s/forged-checkpoints", harness_dir());
    char *b = malloc(cps_len + nl + 2);
    memcpy(b, cp_text, cps_len);
    memcpy(b + cps_len, note, nl);
    b[cps_len + nl] = '\n';
    spit(forged, b, cps_len + nl + 1);
    free(b);
    char ex[2048];
    snprintf(ex, sizeof(ex), "--checkpoints '%s'", forged);
    ck_assert_int_eq(kmsctl_verify(files, ex, out, sizeof(out)), 1);
    ck_assert_msg(strstr(out, "not signed by"), "%s", out);
    EVP_PKEY_free(pk);
  }

  /* 7. A checkpoint with a valid signature (the HSM's key) but a root that is not the log's. */
  {
    struct hsm_config hc = {getenv("PKCS11_MODULE"), "tenantkms", NULL, 1, false};
    char pin[700], err[256], wrong[700];
    snprintf(pin, sizeof(pin), "%s/hsm/pin", harness_dir());
    hc.pin_file = pin;
    hsm *h = NULL;
    hsm_session *s = NULL;
    struct hsm_signing_key sk;
    ck_assert_msg(hsm_open(&h, &hc, err, sizeof(err)) == KMS_OK, "%s", err);
    ck_assert_int_eq(hsm_session_open(h, &s), KMS_OK);
    ck_assert_int_eq(
        hsm_signing_key_open(h, "tenantkms-audit-v1", HSM_SIG_AUTO, &sk, err, sizeof(err)), KMS_OK);
    struct kms_note_vkey real;
    ck_assert_int_eq(
        kms_note_vkey_make(&real, "dev-node/tenantkms-audit",
                           sk.type == HSM_SIG_ED25519 ? KMS_NOTE_SIG_ED25519 : KMS_NOTE_SIG_ECDSA,
                           sk.pub, sk.pub_len),
        KMS_OK);
    struct kms_checkpoint cp;
    memset(&cp, 0, sizeof(cp));
    snprintf(cp.origin, sizeof(cp.origin), "%s", real.name);
    cp.size = 10;
    memset(cp.root, 0x5a, sizeof(cp.root));
    char text[256], note[1024];
    uint8_t sig[HSM_SIG_MAX];
    size_t text_len, sig_len, nl;
    ck_assert_int_eq(kms_checkpoint_format(text, sizeof(text), &text_len, &cp), KMS_OK);
    ck_assert_int_eq(hsm_sign(s, &sk, (const uint8_t *)text, text_len, sig, &sig_len), KMS_OK);
    ck_assert_int_eq(kms_note_format(note, sizeof(note), &nl, text, text_len, &real, sig, sig_len),
                     KMS_OK);
    hsm_session_close(s);
    hsm_close(h);
    snprintf(wrong, sizeof(wrong), "%s/wrong-root.note", harness_dir());
    spit(wrong, note, nl);
    char ex[2048];
    snprintf(ex, sizeof(ex), "--checkpoint '%s'", wrong);
    ck_assert_int_eq(kmsctl_verify(files, ex, out, sizeof(out)), 1);
    ck_assert_msg(strstr(out, "FAILED at record") && strstr(out, "trusted checkpoint 1"), "%s",
                  out);
  }
  free(copy);
  free(orig);
  free(cp_text);
}
END_TEST

/* Search the log for every data key handed out, in raw, hex and base64 form. */
START_TEST(test_no_data_key_or_context_value_in_the_log)
{
  enum { N = 40 };
  static uint8_t keys[N][32];
  harness_start_kmsd();
  create_tenant("acme");
  tk_client *rec = harness_client("recording");
  tk_context *ctx = tk_context_new();
  ck_assert_int_eq(tk_context_add(ctx, "session_id", "s-patient-7f3e9a"), TK_OK);
  for (int i = 0; i < N; i++) {
    tk_data_key *k = NULL;
    size_t l = 0;
    ck_assert_int_eq(tk_data_key_generate(rec, &k, "acme", ctx, 1), TK_OK);
    memcpy(keys[i], tk_data_key_plaintext(k, &l), 32);
    tk_data_key_free(k);
  }
  tk_context_free(ctx);
  tk_client_free(rec);
  ck_assert_int_eq(harness_stop_kmsd(), 0);
  char path[700], hex[65], b64[48];
  for (unsigned f = 1;; f++) {
    snprintf(path, sizeof(path), "%s/audit-%08u.jsonl", g_audit, f);
    if (access(path, F_OK) != 0) {
      break;
    }
    for (int i = 0; i < N; i++) {
      for (int j = 0; j < 32; j++) {
        snprintf(hex + 2 * j, 3, "%02x", keys[i][j]);
      }
      kms_b64_encode(b64, sizeof(b64), keys[i], 32);
      ck_assert(!harness_file_contains(path, keys[i], 32));
      ck_assert(!harness_file_contains(path, (const uint8_t *)hex, 64));
      ck_assert(!harness_file_contains(path, (const uint8_t *)b64, 43));
      /* An 8-byte window is enough to call a key leaked. */
      ck_assert(!harness_file_contains(path, (const uint8_t *)hex, 16));
    }
    ck_assert(!harness_file_contains(path, (const uint8_t *)"s-patient-7f3e9a", 16));
    ck_assert(harness_file_contains(path, (const uint8_t *)"\"session_id\":\"", 14));
  }
}
END_TEST

static void
set_fsize(int pid, rlim_t limit)
{
  struct rlimit rl = {limit, RLIM_INFINITY};
  ck_assert_msg(prlimit(pid, RLIMIT_FSIZE, &rl, NULL) == 0, "prlimit: %s", strerror(errno));
}

static off_t
current_log_size(void)
{
  char p[700];
  struct stat st;
  off_t sz = 0;
  for (unsigned i = 1; i < 1000; i++) {
    snprintf(p, sizeof(p), "%s/audit-%08u.jsonl", g_audit, i);
    if (stat(p, &st) != 0) {
      break;
    }
    sz = st.st_size;
  }
  return sz;
}

/* A full disk (a file-size limit on kmsd): UNAVAILABLE, nothing acknowledged unlogged, then back.
 */
START_TEST(test_disk_full_fails_closed_and_recovers_without_restart)
{
  harness_start_kmsd();
  create_tenant("acme");
  SSL *ssl = harness_raw_connect("clients", "recording");
  ck_assert_ptr_nonnull(ssl);
  /* Warm up (KEK loaded, use budget reserved) so the keystore does not write during the test. */
  send_generate(ssl, 500000, "acme");
  Tkms__Response *r = read_response(ssl);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(r->status, TKMS__STATUS_CODE__OK);
  tkms__response__free_unpacked(r, NULL);

  set_fsize(harness_kmsd_pid(), (rlim_t)current_log_size() + 64);
  int unavailable = 0, ok_ids = 0;
  uint64_t acked[40];
  for (uint64_t id = 500001; id <= 500020; id++) {
    send_generate(ssl, id, "acme");
    r = read_response(ssl);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->request_id, id);
    if (r->status == TKMS__STATUS_CODE__OK) {
      acked[ok_ids++] = id;
    } else {
      ck_assert_int_eq(r->status, TKMS__STATUS_CODE__UNAVAILABLE);
      ck_assert_uint_eq(r->generate_data_key != NULL ? r->generate_data_key->plaintext.len : 0, 0);
      unavailable++;
    }
    tkms__response__free_unpacked(r, NULL);
  }
  ck_assert_int_ge(unavailable, 19);
  /* Health says why. */
  tk_client *officer = harness_client("officer");
  int serving = 1;
  ck_assert_int_eq(tk_health(officer, &serving), TK_OK);
  ck_assert_int_eq(serving, 0);
  char kl[2048], klog[700];
  snprintf(klog, sizeof(klog), "%s/kmsd.log", harness_dir());
  ck_assert(harness_file_contains(klog, (const uint8_t *)"event=audit_failing", 19));

  /* Space again: service resumes by itself (the next record written clears the state). */
  set_fsize(harness_kmsd_pid(), RLIM_INFINITY);
  int resumed = 0;
  for (uint64_t id = 500100; id < 500110 && !resumed; id++) {
    send_generate(ssl, id, "acme");
    r = read_response(ssl);
    ck_assert_ptr_nonnull(r);
    if (r->status == TKMS__STATUS_CODE__OK) {
      resumed = 1;
      acked[ok_ids++] = id;
    }
    tkms__response__free_unpacked(r, NULL);
  }
  ck_assert(resumed);
  ck_assert_int_eq(tk_health(officer, &serving), TK_OK);
  ck_assert_int_eq(serving, 1);
  tk_client_free(officer);
  harness_raw_close(ssl);
  ck_assert_int_eq(harness_stop_kmsd(), 0);
  for (int i = 0; i < ok_ids; i++) {
    snprintf(kl, sizeof(kl), "\"request_id\":%llu,", (unsigned long long)acked[i]);
    ck_assert_msg(log_has_request(kl), "acknowledged request %llu missing from the log",
                  (unsigned long long)acked[i]);
  }
  char files[8192], out[4096];
  log_files(files, sizeof(files), g_audit);
  ck_assert_msg(kmsctl_verify(files, NULL, out, sizeof(out)) == 0, "%s", out);
}
END_TEST

/* kill -9 under pipelined load, several times: every acknowledged request is in the log. */
START_TEST(test_kill9_under_load_loses_no_acknowledged_record)
{
  enum { ROUNDS = 4, PIPE = 200 };
  static uint64_t acked[ROUNDS * PIPE * 4];
  size_t n_acked = 0;
  /* Tenant "acme" exists (test_create_tenant_for_kill9). */
  for (int round = 0; round < ROUNDS; round++) {
    harness_start_kmsd();
    int pid = harness_kmsd_pid();
    SSL *conns[3];
    for (int c = 0; c < 3; c++) {
      conns[c] = harness_raw_connect("clients", "recording");
      ck_assert_ptr_nonnull(conns[c]);
    }
    for (int i = 0; i < PIPE; i++) {
      for (int c = 0; c < 3; c++) {
        send_generate(conns[c], (uint64_t)(1000000 * (round + 1) + 10000 * c + i), "acme");
      }
    }
    /* Let some answers come back (a few more each round), then kill mid-stream. */
    for (int i = 0; i < 5 + 20 * round; i++) {
      Tkms__Response *r = read_response(conns[0]);
      ck_assert_ptr_nonnull(r);
      if (r->status == TKMS__STATUS_CODE__OK) {
        acked[n_acked++] = r->request_id;
      }
      tkms__response__free_unpacked(r, NULL);
    }
    kill(pid, SIGKILL);
    for (int c = 0; c < 3; c++) {
      Tkms__Response *r;
      while ((r = read_response(conns[c])) != NULL) {
        if (r->status == TKMS__STATUS_CODE__OK) {
          acked[n_acked++] = r->request_id;
        }
        tkms__response__free_unpacked(r, NULL);
      }
      harness_raw_close(conns[c]);
    }
    harness_stop_kmsd(); /* reaps the killed process */
  }
  fprintf(stderr, "# kill -9: %zu acknowledged requests over %d rounds\n", n_acked, ROUNDS);
  ck_assert_uint_gt(n_acked, 0);
  /* A restart recovers (torn lines cut), and the log verifies as a whole. */
  harness_start_kmsd();
  ck_assert_int_eq(harness_stop_kmsd(), 0);
  for (size_t i = 0; i < n_acked; i++) {
    char kl[64];
    snprintf(kl, sizeof(kl), "\"request_id\":%llu,", (unsigned long long)acked[i]);
    ck_assert_msg(log_has_request(kl), "acknowledged request %llu missing from the log",
                  (unsigned long long)acked[i]);
  }
  char files[8192], out[4096];
  log_files(files, sizeof(files), g_audit);
  ck_assert_msg(kmsctl_verify(files, NULL, out, sizeof(out)) == 0, "%s", out);
}
END_TEST

START_TEST(test_create_tenant_for_kill9)
{
  /* (helper run before the kill -9 test: creates the tenant with a live kmsd) */
  harness_start_kmsd();
  create_tenant("acme");
  ck_assert_int_eq(harness_stop_kmsd(), 0);
}
END_TEST

static Suite *
audit_it_suite(void)
{
  Suite *s = suite_create("audit-it");
  TCase *tc = tcase_create("audit");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_kmsctl_catches_every_kind_of_tampering);
  tcase_add_test(tc, test_no_data_key_or_context_value_in_the_log);
  tcase_add_test(tc, test_disk_full_fails_closed_and_recovers_without_restart);
  tcase_add_test(tc, test_create_tenant_for_kill9);
  tcase_add_test(tc, test_kill9_under_load_loses_no_acknowledged_record);
  suite_add_tcase(s, tc);
  return s;
}

int
main(void)
{
  /* Small files and frequent checkpoints, so rotation and periodic signing happen in a test. */
  harness_setup("audit_rotate_bytes = 16384\naudit_checkpoint_seconds = 1");
  snprintf(g_audit, sizeof(g_audit), "%s/audit", harness_dir());
  SRunner *sr = srunner_create(audit_it_suite());
  srunner_set_fork_status(sr, CK_NOFORK); /* tests share the one environment, in order */
  srunner_run_all(sr, CK_ENV);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  if (harness_kmsd_alive()) {
    harness_stop_kmsd();
  }
  return harness_cleanup(failed);
}
