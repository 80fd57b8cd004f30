/* Parses and checks kmsd.conf (format: common/kms_conf.h). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms_conf.h"
#include "kms_err.h"
#include "kms_frame.h"
#include "log.h"

static int
set_str(char *dst, size_t cap, const char *value, char *why, size_t why_len)
{
  size_t n = strlen(value);
  if (n == 0 || n >= cap) {
    snprintf(why, why_len, "value empty or longer than %zu bytes", cap - 1);
    return KMS_ERR_CONFIG;
  }
  memcpy(dst, value, n + 1);
  return KMS_OK;
}

static int
set_uint(unsigned long long *dst, const char *value, unsigned long long min,
         unsigned long long max, char *why, size_t why_len)
{
  if (kms_conf_uint(value, min, max, dst) != KMS_OK) {
    snprintf(why, why_len, "expected an integer in [%llu, %llu]", min, max);
    return KMS_ERR_CONFIG;
  }
  return KMS_OK;
}

static int
parse_listen(struct kmsd_config *c, const char *value, char *why, size_t why_len)
{
  const char *colon = strrchr(value, ':');
  unsigned long long port;
  if (colon == NULL || colon == value || (size_t)(colon - value) >= sizeof(c->listen_host) ||
      kms_conf_uint(colon + 1, 0, 65535, &port) != KMS_OK) {
    snprintf(why, why_len, "expected HOST:PORT");
    return KMS_ERR_CONFIG;
  }
  memcpy(c->listen_host, value, (size_t)(colon - value));
  c->listen_host[colon - value] = '\0';
  c->listen_port = (uint16_t)port;
  return KMS_OK;
}

/* metrics_listen = HOST:PORT, HOST a loopback name: the metrics port is never remote. */
static int
parse_metrics_listen(struct kmsd_config *c, const char *value, char *why, size_t why_len)
{
  const char *colon = strrchr(value, ':');
  unsigned long long port;
  if (colon == NULL || colon == value || (size_t)(colon - value) >= sizeof(c->metrics_host) ||
      kms_conf_uint(colon + 1, 0, 65535, &port) != KMS_OK) {
    snprintf(why, why_len, "expected HOST:PORT");
    return KMS_ERR_CONFIG;
  }
  memcpy(c->metrics_host, value, (size_t)(colon - value));
  c->metrics_host[colon - value] = '\0';
  if (strcmp(c->metrics_host, "localhost") != 0 && strcmp(c->metrics_host, "::1") != 0 &&
      strcmp(c->metrics_host, "[::1]") != 0 && strncmp(c->metrics_host, "127.", 4) != 0) {
    snprintf(why, why_len, "must be a loopback address (127.0.0.1, ::1 or localhost)");
    return KMS_ERR_CONFIG;
  }
  if (strcmp(c->metrics_host, "[::1]") == 0) {
    snprintf(c->metrics_host, sizeof(c->metrics_host), "::1");
  }
  c->metrics_port = (uint16_t)port;
  c->metrics_enabled = 1;
  return KMS_OK;
}

static int
on_entry(void *arg, const char *key, const char *value, char *why, size_t why_len)
{
  struct kmsd_config *c = arg;
  unsigned long long v;
  int r;

  if (strcmp(key, "listen") == 0) {
    return parse_listen(c, value, why, why_len);
  }
  if (strcmp(key, "tls_cert") == 0) {
    return set_str(c->tls_cert, sizeof(c->tls_cert), value, why, why_len);
  }
  if (strcmp(key, "tls_key") == 0) {
    return set_str(c->tls_key, sizeof(c->tls_key), value, why, why_len);
  }
  if (strcmp(key, "tls_ca") == 0) {
    return set_str(c->tls_ca, sizeof(c->tls_ca), value, why, why_len);
  }
  if (strcmp(key, "pkcs11_module") == 0) {
    return set_str(c->pkcs11_module, sizeof(c->pkcs11_module), value, why, why_len);
  }
  if (strcmp(key, "token_label") == 0) {
    return set_str(c->token_label, sizeof(c->token_label), value, why, why_len);
  }
  if (strcmp(key, "pin_file") == 0) {
    return set_str(c->pin_file, sizeof(c->pin_file), value, why, why_len);
  }
  if (strcmp(key, "keystore") == 0) {
    return set_str(c->keystore, sizeof(c->keystore), value, why, why_len);
  }
  if (strcmp(key, "audit_dir") == 0) {
    return set_str(c->audit_dir, sizeof(c->audit_dir), value, why, why_len);
  }
  if (strcmp(key, "node_name") == 0) {
    return set_str(c->node_name, sizeof(c->node_name), value, why, why_len);
  }
  if (strcmp(key, "audit_rotate_bytes") == 0) {
    r = set_uint(&v, value, 4096, 1ULL << 40, why, why_len);
    c->audit_rotate_bytes = v;
    return r;
  }
  if (strcmp(key, "audit_checkpoint_seconds") == 0) {
    r = set_uint(&v, value, 1, 60, why, why_len);
    c->audit_checkpoint_s = (unsigned)v;
    return r;
  }
  if (strcmp(key, "workers") == 0) {
    r = set_uint(&v, value, 1, 64, why, why_len);
    c->workers = (unsigned)v;
    return r;
  }
  if (strcmp(key, "kek_cache_size") == 0) {
    r = set_uint(&v, value, 1, 1000000, why, why_len);
    c->kek_cache_size = (size_t)v;
    return r;
  }
  if (strcmp(key, "kek_max_uses") == 0) {
    r = set_uint(&v, value, 16, CONFIG_KEK_MAX_USES_CEILING, why, why_len);
    c->kek_max_uses = v;
    return r;
  }
  if (strcmp(key, "max_frame") == 0) {
    r = set_uint(&v, value, 1024, KMS_FRAME_MAX_HARD, why, why_len);
    c->max_frame = (size_t)v;
    return r;
  }
  if (strcmp(key, "max_connections") == 0) {
    r = set_uint(&v, value, 1, 100000, why, why_len);
    c->max_connections = (unsigned)v;
    return r;
  }
  if (strcmp(key, "max_inflight") == 0) {
    r = set_uint(&v, value, 1, 4096, why, why_len);
    c->max_inflight = (unsigned)v;
    return r;
  }
  if (strcmp(key, "handshake_timeout_ms") == 0) {
    r = set_uint(&v, value, 100, 600000, why, why_len);
    c->handshake_timeout_ms = (unsigned)v;
    return r;
  }
  if (strcmp(key, "idle_timeout_ms") == 0) {
    r = set_uint(&v, value, 1000, 86400000, why, why_len);
    c->idle_timeout_ms = (unsigned)v;
    return r;
  }
  if (strcmp(key, "hsm_latency_us") == 0) {
    r = set_uint(&v, value, 0, 1000000, why, why_len);
    c->hsm_latency_us = (unsigned)v;
    return r;
  }
  if (strcmp(key, "kek_state_ttl_ms") == 0) {
    r = set_uint(&v, value, 0, 3600000, why, why_len);
    c->kek_state_ttl_ms = (unsigned)v;
    return r;
  }
  if (strcmp(key, "approvals_required") == 0) {
    r = set_uint(&v, value, 2, 8, why, why_len);
    c->approvals_required = (unsigned)v;
    return r;
  }
  if (strcmp(key, "approval_window_s") == 0) {
    r = set_uint(&v, value, 1, 30 * 86400, why, why_len);
    c->approval_window_s = (unsigned)v;
    return r;
  }
  if (strcmp(key, "destruction_wait_days") == 0) {
    /* The lower bound of 7 is checked after the file: the test knob may come later. */
    r = set_uint(&v, value, 0, CONFIG_DESTRUCTION_WAIT_MAX_DAYS, why, why_len);
    c->destruction_wait_days = (unsigned)v;
    return r;
  }
  if (strcmp(key, "allow_short_waiting_periods") == 0) {
    if (strcmp(value, "true") != 0 && strcmp(value, "false") != 0) {
      snprintf(why, why_len, "expected true or false");
      return KMS_ERR_CONFIG;
    }
    c->allow_short_waiting_periods = strcmp(value, "true") == 0;
    return KMS_OK;
  }
  if (strcmp(key, "rotation_period_days") == 0) {
    r = set_uint(&v, value, 0, 3650, why, why_len);
    c->rotation_period_days = (unsigned)v;
    return r;
  }
  if (strcmp(key, "lifecycle_interval_s") == 0) {
    r = set_uint(&v, value, 1, 3600, why, why_len);
    c->lifecycle_interval_s = (unsigned)v;
    return r;
  }
  if (strcmp(key, "root_rewrap_per_second") == 0) {
    r = set_uint(&v, value, 0, 1000000, why, why_len);
    c->root_rewrap_per_second = (unsigned)v;
    return r;
  }
  if (strcmp(key, "root_retain_days") == 0) {
    r = set_uint(&v, value, 0, 3650, why, why_len);
    c->root_retain_days = (unsigned)v;
    return r;
  }
  if (strcmp(key, "hsm_timeout_ms") == 0) {
    r = set_uint(&v, value, 50, 600000, why, why_len);
    c->hsm_timeout_ms = (unsigned)v;
    return r;
  }
  if (strcmp(key, "max_connections_per_peer") == 0) {
    r = set_uint(&v, value, 1, 100000, why, why_len);
    c->max_conns_per_peer = (unsigned)v;
    return r;
  }
  if (strcmp(key, "max_handshakes") == 0) {
    r = set_uint(&v, value, 1, 100000, why, why_len);
    c->max_handshakes = (unsigned)v;
    return r;
  }
  if (strcmp(key, "frame_timeout_ms") == 0) {
    r = set_uint(&v, value, 100, 600000, why, why_len);
    c->frame_timeout_ms = (unsigned)v;
    return r;
  }
  if (strcmp(key, "rate_limit") == 0) {
    r = set_uint(&v, value, 0, 10000000, why, why_len);
    c->rate_limit = (unsigned)v;
    return r;
  }
  if (strcmp(key, "rate_burst") == 0) {
    r = set_uint(&v, value, 0, 100000000, why, why_len);
    c->rate_burst = (unsigned)v;
    return r;
  }
  if (strcmp(key, "user") == 0) {
    return set_str(c->user, sizeof(c->user), value, why, why_len);
  }
  if (strcmp(key, "log_format") == 0) {
    c->log_format = log_parse_format(value);
    if (c->log_format < 0) {
      snprintf(why, why_len, "expected text or json");
      return KMS_ERR_CONFIG;
    }
    return KMS_OK;
  }
  if (strcmp(key, "log_level") == 0) {
    c->log_level = log_parse_level(value);
    if (c->log_level < 0) {
      snprintf(why, why_len, "expected error, warn, info or debug");
      return KMS_ERR_CONFIG;
    }
    return KMS_OK;
  }
  if (strcmp(key, "policy") == 0) {
    return set_str(c->policy, sizeof(c->policy), value, why, why_len);
  }
  if (strcmp(key, "tls_crl") == 0) {
    return set_str(c->tls_crl, sizeof(c->tls_crl), value, why, why_len);
  }
  if (strcmp(key, "metrics_listen") == 0) {
    return parse_metrics_listen(c, value, why, why_len);
  }
  if (strcmp(key, "backup_dir") == 0) {
    return set_str(c->backup_dir, sizeof(c->backup_dir), value, why, why_len);
  }
  /* Say where the interim role lists went rather than just "unknown key". */
  if (strcmp(key, "officer") == 0 || strcmp(key, "service") == 0) {
    snprintf(why, why_len, "removed: grants are in the policy files (policy = PATH, "
                           "docs/POLICY.md)");
    return KMS_ERR_CONFIG;
  }
  snprintf(why, why_len, "unknown key");
  return KMS_ERR_CONFIG;
}

static void
defaults(struct kmsd_config *out)
{
  memset(out, 0, sizeof(*out));
  snprintf(out->listen_host, sizeof(out->listen_host), "127.0.0.1");
  out->listen_port = 7443;
  snprintf(out->token_label, sizeof(out->token_label), "tenantkms");
  out->workers = 2;
  out->kek_cache_size = 4096;
  out->kek_max_uses = CONFIG_KEK_MAX_USES_DEFAULT;
  out->max_frame = KMS_FRAME_MAX_DEFAULT;
  out->max_connections = 1024;
  out->max_inflight = 64;
  out->handshake_timeout_ms = 10000;
  out->idle_timeout_ms = 300000;
  out->log_level = LOG_INFO;
  snprintf(out->node_name, sizeof(out->node_name), "kmsd");
  out->audit_rotate_bytes = 64ULL << 20;
  out->audit_checkpoint_s = 60;
  out->approvals_required = 2;
  out->approval_window_s = 86400;
  out->destruction_wait_days = CONFIG_DESTRUCTION_WAIT_MAX_DAYS;
  out->rotation_period_days = 90;
  out->lifecycle_interval_s = 60;
  out->kek_state_ttl_ms = 1000;
  out->hsm_timeout_ms = 2000;
  out->max_conns_per_peer = 256;
  out->max_handshakes = 64;
  out->frame_timeout_ms = 10000;
}

/* What no single line can check: cross-key rules, derived values, required keys. */
static int
finish(struct kmsd_config *out, const char *path, char *err, size_t err_len)
{
  if (out->destruction_wait_days < CONFIG_DESTRUCTION_WAIT_MIN_DAYS &&
      !out->allow_short_waiting_periods) {
    snprintf(err, err_len,
             "%s: destruction_wait_days: at least %d (below only with "
             "allow_short_waiting_periods = true, a test knob)",
             path, CONFIG_DESTRUCTION_WAIT_MIN_DAYS);
    return KMS_ERR_CONFIG;
  }
  if (out->rate_limit > 0 && out->rate_burst == 0) {
    out->rate_burst = out->rate_limit > UINT32_MAX / 2 ? UINT32_MAX : out->rate_limit * 2;
  }
  if (out->max_conns_per_peer > out->max_connections) {
    out->max_conns_per_peer = out->max_connections;
  }
  if (out->max_handshakes > out->max_connections) {
    out->max_handshakes = out->max_connections;
  }
  const struct {
    const char *key;
    const char *val;
  } required[] = {
      {"tls_cert", out->tls_cert},   {"tls_key", out->tls_key},
      {"tls_ca", out->tls_ca},       {"pkcs11_module", out->pkcs11_module},
      {"pin_file", out->pin_file},   {"keystore", out->keystore},
      {"policy", out->policy},       {"audit_dir", out->audit_dir},
  };
  for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
    if (required[i].val[0] == '\0') {
      snprintf(err, err_len, "%s: missing required key '%s'", path, required[i].key);
      return KMS_ERR_CONFIG;
    }
  }
  return KMS_OK;
}

int
config_load(struct kmsd_config *out, const char *path, char *err, size_t err_len)
{
  defaults(out);
  int r = kms_conf_parse(path, on_entry, out, err, err_len);
  if (r != KMS_OK) {
    return r;
  }
  return finish(out, path, err, err_len);
}

int
config_load_buf(struct kmsd_config *out, const char *name, const char *buf, size_t len,
                char *err, size_t err_len)
{
  defaults(out);
  int r = kms_conf_parse_buf(name, buf, len, on_entry, out, err, err_len);
  if (r != KMS_OK) {
    return r;
  }
  return finish(out, name, err, err_len);
}
