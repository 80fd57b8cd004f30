/* kmsd: start-up, hardening, signal handling and orderly shutdown. */
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <libgen.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/crypto.h>

#include "audit.h"
#include "authz.h"
#include "config.h"
#include "hsm.h"
#include "kekcache.h"
#include "keystore.h"
#include "kms_err.h"
#include "lifecycle.h"
#include "limiter.h"
#include "log.h"
#include "metrics.h"
#include "rpc.h"
#include "rootjob.h"
#include "selftest.h"
#include "transport.h"
#include "workers.h"

#define SECURE_HEAP_BYTES (1u << 20)
#define DRAIN_SECONDS 10

struct daemon {
  struct event_base *base;
  server *srv;
  struct rpc rpc;
  struct event *drain_timer;
  int drain_ticks;
  struct event *lifecycle_timer;
  metrics *metrics; /* HTTP metrics and health (metrics_listen); NULL: off */
};

/*
 * The key lifecycle timer (kmsd/lifecycle.c): approval expiries, destructions
 * that fell due, automatic rotations. The work runs on a worker, never here.
 */
static void
on_lifecycle_tick(evutil_socket_t fd, short what, void *arg)
{
  struct daemon *d = arg;
  if (!d->rpc.draining) {
    lifecycle_tick_submit(d->rpc.pool, d->rpc.cfg, d->rpc.ops.cache);
  }
}

static void
usage(FILE *f)
{
  fprintf(f, "usage: kmsd --config FILE\n"
             "  Serves tenant key operations over mutual TLS (docs/OPERATIONS.md).\n"
             "  SIGTERM/SIGINT: stop accepting, finish requests in flight, exit.\n"
             "  SIGHUP: reload the policy, certificates and CRL.\n");
}

/* Core dumps and ptrace could expose key material: switch both off first. */
static void
harden_process(void)
{
  struct rlimit no_core = {0, 0};
  if (setrlimit(RLIMIT_CORE, &no_core) != 0) {
    log_msg(LOG_WARN, "event=harden what=rlimit_core errno=%d", errno);
  }
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    log_msg(LOG_WARN, "event=harden what=dumpable errno=%d", errno);
  }
  /* Secrets (kms_secret) come from OpenSSL's locked, undumpable secure heap. */
  if (CRYPTO_secure_malloc_init(SECURE_HEAP_BYTES, 16) == 0) {
    log_msg(LOG_WARN, "event=harden what=secure_heap result=unavailable "
                      "note=\"secrets fall back to mlocked pages\"");
  }
}

/*
 * drop_privileges: started as root with `user` set, become that user once
 * everything that needs root is open (HSM, keystore, audit log, listening
 * socket). The files kmsd touches later must belong to the user: the PIN file
 * (read again to log in after an HSM reset), the keystore's and the audit
 * log's directories (new WAL and log files), the policy and TLS files
 * (SIGHUP). Each is checked here, so a wrong owner stops kmsd at start, not
 * at the first HSM outage. Returns KMS_OK or an error with the reason in |err|.
 */
static int
drop_privileges(const struct kmsd_config *cfg, char *err, size_t err_len)
{
  if (geteuid() != 0) {
    if (cfg->user[0] != '\0') {
      log_msg(LOG_INFO, "event=privileges note=\"not root: user = %s ignored\"", cfg->user);
    }
    return KMS_OK;
  }
  if (cfg->user[0] == '\0') {
    log_msg(LOG_WARN, "event=running_as_root note=\"set user = NAME to drop privileges "
                      "(docs/HARDENING.md)\"");
    return KMS_OK;
  }
  struct passwd *pw = getpwnam(cfg->user);
  if (pw == NULL || pw->pw_uid == 0) {
    snprintf(err, err_len, "user %s: %s", cfg->user,
             pw == NULL ? "no such user" : "is root: nothing to drop");
    return KMS_ERR_CONFIG;
  }
  uid_t uid = pw->pw_uid;
  gid_t gid = pw->pw_gid;
  if (setgroups(1, &gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
    snprintf(err, err_len, "dropping to user %s: %s", cfg->user, strerror(errno));
    return KMS_ERR_INTERNAL;
  }
  /* Gone for good: neither the real, effective nor saved uid may be root now. */
  if (setuid(0) == 0 || seteuid(0) == 0 || getuid() == 0 || geteuid() == 0 || getegid() == 0) {
    snprintf(err, err_len, "dropping to user %s: root could be regained", cfg->user);
    return KMS_ERR_INTERNAL;
  }
  /* A uid change resets the dumpable flag from fs.suid_dumpable: set it again. */
  (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  (void)prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  char ks_dir[sizeof(cfg->keystore)];
  const char *ks_path = strncmp(cfg->keystore, "sqlite:", 7) == 0 ? cfg->keystore + 7 : NULL;
  if (ks_path != NULL) {
    snprintf(ks_dir, sizeof(ks_dir), "%s", ks_path);
  }
  const struct {
    const char *what, *path;
    int mode;
  } need[] = {
      {"pin_file", cfg->pin_file, R_OK},
      {"audit_dir", cfg->audit_dir, R_OK | W_OK | X_OK},
      {"keystore directory", ks_path != NULL ? dirname(ks_dir) : NULL, R_OK | W_OK | X_OK},
      {"policy", cfg->policy, R_OK},
      {"tls_key", cfg->tls_key, R_OK},
      {"tls_crl", cfg->tls_crl[0] != '\0' ? cfg->tls_crl : NULL, R_OK},
      {"backup_dir", cfg->backup_dir[0] != '\0' ? cfg->backup_dir : NULL, R_OK | W_OK | X_OK},
  };
  for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
    if (need[i].path != NULL && access(need[i].path, need[i].mode) != 0) {
      snprintf(err, err_len, "user %s cannot use %s %s: %s", cfg->user, need[i].what,
               need[i].path, strerror(errno));
      return KMS_ERR_CONFIG;
    }
  }
  log_msg(LOG_INFO, "event=privileges_dropped user=%s uid=%u gid=%u", cfg->user, (unsigned)uid,
          (unsigned)gid);
  return KMS_OK;
}

static void
on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
  struct daemon *d = arg;
  d->drain_ticks++;
  /* Done when no request is in flight and every answer has left. */
  int idle = workers_pending(d->rpc.pool) == 0 && server_output_pending(d->srv) == 0 &&
             (d->rpc.audit == NULL || audit_pending(d->rpc.audit) == 0);
  if (idle || d->drain_ticks > DRAIN_SECONDS * 10) {
    event_base_loopbreak(d->base);
  }
}

static void
on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
  struct daemon *d = arg;
  if (d->rpc.draining) {
    return;
  }
  log_msg(LOG_INFO, "event=stopping signal=%d in_flight=%zu", (int)sig,
          workers_pending(d->rpc.pool));
  d->rpc.draining = 1;
  server_stop_accepting(d->srv);
  struct timeval tick = {0, 100000};
  d->drain_timer = event_new(d->base, -1, EV_PERSIST, on_drain_tick, d);
  event_add(d->drain_timer, &tick);
}

/* SIGHUP: reload the policy and the TLS files; whatever fails to load keeps its old version. */
static void
on_hup(evutil_socket_t sig, short what, void *arg)
{
  struct daemon *d = arg;
  char err[512] = "";
  log_msg(LOG_INFO, "event=sighup");
  if (authz_load(d->rpc.cfg->policy, err, sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=policy_reload_failed reason=\"%s\" note=\"previous policy stays "
                       "in force\"", err);
  }
  if (server_reload_tls(d->srv, err, sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=tls_reload_failed reason=\"%s\" note=\"previous certificate and "
                       "CRL stay in force\"", err);
  } else {
    log_msg(LOG_INFO, "event=tls_reloaded crl=%s",
            d->rpc.cfg->tls_crl[0] != '\0' ? d->rpc.cfg->tls_crl : "-");
  }
}

int
main(int argc, char **argv)
{
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *config_path = NULL;
  int opt;
  while ((opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'c':
      config_path = optarg;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (config_path == NULL || optind != argc) {
    usage(stderr);
    return 2;
  }

  int rc = 1;
  char err[512] = "";
  struct kmsd_config cfg;
  struct daemon d;
  hsm *h = NULL;
  keystore *ks = NULL;
  struct event *sig_term = NULL, *sig_int = NULL, *sig_hup = NULL;
  memset(&d, 0, sizeof(d));

  harden_process();
  signal(SIGPIPE, SIG_IGN);

  if (config_load(&cfg, config_path, err, sizeof(err)) != KMS_OK) {
    fprintf(stderr, "kmsd: %s\n", err);
    return 1;
  }
  log_set_level(cfg.log_level);
  log_set_format(cfg.log_format);

  /* Known answers first: with broken cryptography nothing else is worth starting. */
  if (selftest_software(err, sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=start_failed stage=selftest reason=\"%s\"", err);
    goto out;
  }

  /* Policy before the HSM: a refused policy stops kmsd before it logs in anywhere. */
  if (rpc_check_policy_vocabulary(err, sizeof(err)) != KMS_OK ||
      authz_load(cfg.policy, err, sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=start_failed stage=policy reason=\"%s\"", err);
    goto out;
  }

  /* The first open applies schema migrations before any worker runs. */
  if (keystore_open(&ks, cfg.keystore, err, sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=start_failed stage=keystore reason=\"%s\"", err);
    goto out;
  }
  struct hsm_config hc = {cfg.pkcs11_module, cfg.token_label, cfg.pin_file, 0, false};
  {
    /* The root new KEKs wrap under is the keystore's word (0 at first: the newest on the token). */
    struct ks_root *roots = NULL;
    size_t n_roots = 0;
    if (keystore_root_list(ks, &roots, &n_roots) != KMS_OK) {
      log_msg(LOG_ERROR, "event=start_failed stage=keystore reason=\"cannot list root keys\"");
      goto out;
    }
    for (size_t i = 0; i < n_roots; i++) {
      if (roots[i].state == KS_ROOT_CURRENT) {
        hc.root_version = roots[i].version;
      }
    }
    free(roots);
  }
  {
    /* Tenants exist: their key tokens need the root key that is on the token now. */
    struct ks_tenant *some = NULL;
    size_t n_some = 0;
    if (keystore_tenant_list(ks, NULL, 1, &some, &n_some) != KMS_OK) {
      log_msg(LOG_ERROR, "event=start_failed stage=keystore reason=\"cannot list tenants\"");
      goto out;
    }
    hc.require_root = n_some > 0;
    free(some);
  }
  if (hsm_open(&h, &hc, err, sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=start_failed stage=hsm reason=\"%s\"", err);
    goto out;
  }
  hsm_set_call_timeout(h, cfg.hsm_timeout_ms);
  if (evthread_use_pthreads() != 0 || (d.base = event_base_new()) == NULL) {
    log_msg(LOG_ERROR, "event=start_failed stage=event_loop");
    goto out;
  }
  d.rpc.cfg = &cfg;
  {
    /* Before any request can arrive: no answer without its record (docs/AUDIT.md). */
    struct audit_config ac = {cfg.audit_dir, cfg.node_name, cfg.audit_rotate_bytes,
                              cfg.audit_checkpoint_s * 1000u, HSM_SIG_AUTO, NULL};
    if (audit_open(&d.rpc.audit, &ac, h, d.base, err, sizeof(err)) != KMS_OK) {
      log_msg(LOG_ERROR, "event=start_failed stage=audit reason=\"%s\"", err);
      goto out;
    }
  }
  /* The HSM's answers, once its keys exist (the signing key is made by audit_open). */
  if (selftest_hsm(h, AUDIT_SIGN_KEY_ID, err, sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=start_failed stage=selftest reason=\"%s\"", err);
    goto out;
  }
  log_msg(LOG_INFO, "event=selftest result=passed tests=\"aes-256-gcm kwp hkdf-sha256 "
                    "hkdf-sha512 hsm-gcm hsm-wrap checkpoint-signature\"");
  if (cfg.rate_limit > 0 && (d.rpc.limits = limits_new(cfg.rate_limit, cfg.rate_burst)) == NULL) {
    goto out;
  }
  d.rpc.ops.max_uses = cfg.kek_max_uses;
  d.rpc.ops.reserve_block = cfg.kek_max_uses >= 1u << 20 ? 1024 : 1;
  d.rpc.ops.state_ttl_ms = cfg.kek_state_ttl_ms;
  d.rpc.ops.hsm_latency_us = cfg.hsm_latency_us;
  d.rpc.ops.cache = kekcache_new(cfg.kek_cache_size);
  if (d.rpc.ops.cache == NULL) {
    goto out;
  }
  if (workers_start(&d.rpc.pool, d.base, cfg.workers, h, cfg.keystore, 8192, err,
                    sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=start_failed stage=workers reason=\"%s\"", err);
    goto out;
  }
  {
    /* Resumes a root rotation left unfinished (kill -9, power cut) on its own. */
    struct rootjob_config rc_cfg = {cfg.root_rewrap_per_second, cfg.root_retain_days};
    if (rootjob_start(&d.rpc.rootjob, h, cfg.keystore, &rc_cfg, err, sizeof(err)) != KMS_OK) {
      log_msg(LOG_ERROR, "event=start_failed stage=root_job reason=\"%s\"", err);
      goto out;
    }
  }
  char bound[128];
  if (server_start(&d.srv, d.base, &cfg, &d.rpc, bound, sizeof(bound), err,
                   sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=start_failed stage=listen reason=\"%s\"", err);
    goto out;
  }
  if (cfg.metrics_enabled) {
    struct metrics_sources ms = {h, &d.rpc, d.srv, cfg.keystore};
    char mbound[128];
    if (metrics_start(&d.metrics, d.base, cfg.metrics_host, cfg.metrics_port, &ms, mbound,
                      sizeof(mbound), err, sizeof(err)) != KMS_OK) {
      log_msg(LOG_ERROR, "event=start_failed stage=metrics reason=\"%s\"", err);
      goto out;
    }
    log_msg(LOG_INFO, "event=metrics_ready listen=%s", mbound);
  }
  /* Everything that needs root is open: the socket, the HSM, the keystore, the audit log. */
  if (drop_privileges(&cfg, err, sizeof(err)) != KMS_OK) {
    log_msg(LOG_ERROR, "event=start_failed stage=privileges reason=\"%s\"", err);
    goto out;
  }
  sig_term = evsignal_new(d.base, SIGTERM, on_stop_signal, &d);
  sig_int = evsignal_new(d.base, SIGINT, on_stop_signal, &d);
  sig_hup = evsignal_new(d.base, SIGHUP, on_hup, &d);
  event_add(sig_term, NULL);
  event_add(sig_int, NULL);
  event_add(sig_hup, NULL);
  struct timeval lc_every = {(time_t)cfg.lifecycle_interval_s, 0};
  d.lifecycle_timer = event_new(d.base, -1, EV_PERSIST, on_lifecycle_tick, &d);
  if (d.lifecycle_timer == NULL || event_add(d.lifecycle_timer, &lc_every) != 0) {
    log_msg(LOG_ERROR, "event=start_failed stage=lifecycle_timer");
    goto out;
  }

  log_msg(LOG_INFO, "event=ready listen=%s workers=%u kek_cache=%zu", bound, cfg.workers,
          cfg.kek_cache_size);
  printf("kmsd ready on %s\n", bound);
  fflush(stdout);

  event_base_dispatch(d.base);
  log_msg(LOG_INFO, "event=stopped");
  rc = 0;
out:
  metrics_free(d.metrics); /* no scrape may look at what is torn down next */
  if (d.srv != NULL) {
    server_close_all(d.srv);
  }
  workers_stop(d.rpc.pool); /* joins threads; last done() callbacks see closed conns */
  rootjob_stop(d.rpc.rootjob);
  audit_close(d.rpc.audit); /* last records, final checkpoint, then the held answers */
  server_free(d.srv);
  if (d.drain_timer != NULL) {
    event_free(d.drain_timer);
  }
  if (d.lifecycle_timer != NULL) {
    event_free(d.lifecycle_timer);
  }
  if (sig_term != NULL) {
    event_free(sig_term);
    event_free(sig_int);
    event_free(sig_hup);
  }
  /* A closed bufferevent is finalised by a deferred callback on the loop;
   * with nothing else registered any more, let those run so no connection's
   * buffers outlive kmsd's own shutdown. */
  for (int i = 0; d.base != NULL && i < 4; i++) {
    event_base_loop(d.base, EVLOOP_NONBLOCK);
  }
  kekcache_free(d.rpc.ops.cache);
  limits_free(d.rpc.limits);
  authz_shutdown();
  keystore_close(ks);
  hsm_close(h);
  if (d.base != NULL) {
    event_base_free(d.base);
  }
  return rc;
}
