/* Keystore front end: picks a backend by URL scheme and checks arguments before dispatching. */
#include "keystore.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kms_err.h"

/*
 * Backends, looked up by URL scheme. A PostgreSQL backend joins this table;
 * nothing else in kmsd needs to change.
 */
static const struct keystore_ops *const backends[] = {
    &keystore_sqlite_ops,
};

/* Longest scheme we echo back in an error message. */
#define SCHEME_ECHO_MAX 32

static void set_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t err_len, const char *fmt, ...) {
  va_list ap;

  if (err == NULL || err_len == 0) {
    return;
  }
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
}

/* A tenant id is 1..KS_TENANT_ID_MAX bytes; the wire layer has checked its characters. */
static int valid_tenant_id(const char *tenant_id) {
  size_t n;

  if (tenant_id == NULL) {
    return 0;
  }
  n = strnlen(tenant_id, KS_TENANT_ID_MAX + 1);
  return n >= 1 && n <= KS_TENANT_ID_MAX;
}

/*
 * valid_new_kek checks a KEK about to be recorded. Its state must be active (or
 * left zero): the keystore records new versions as active, and anything else
 * means the caller is confused. Its use counter is ignored: a new version has
 * reserved nothing, and callers may build it from a copy of the previous one.
 */
static int valid_new_kek(const struct ks_kek *kek) {
  if (kek == NULL) {
    return 0;
  }
  /* The id lives in a fixed array: it must be terminated inside it. */
  if (memchr(kek->tenant_id, '\0', sizeof(kek->tenant_id)) == NULL ||
      !valid_tenant_id(kek->tenant_id)) {
    return 0;
  }
  if (kek->version == 0) {
    return 0;
  }
  if (kek->state != 0 && kek->state != KS_KEK_ACTIVE) {
    return 0;
  }
  if (kek->token_len == 0 || kek->token_len > HSM_KEY_TOKEN_MAX) {
    return 0;
  }
  if (kek->created_ms < 0) {
    return 0;
  }
  return 1;
}

int keystore_open(keystore **out, const char *url, char *err, size_t err_len) {
  const struct keystore_ops *ops = NULL;
  const char *colon;
  size_t scheme_len, i;
  int r = KMS_ERR_INTERNAL;

  if (err != NULL && err_len > 0) {
    err[0] = '\0';
  }
  if (out == NULL) {
    set_err(err, err_len, "keystore_open: no output handle");
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (url == NULL) {
    set_err(err, err_len, "no keystore URL configured");
    r = KMS_ERR_CONFIG;
    goto out;
  }
  colon = strchr(url, ':');
  if (colon == NULL || colon == url) {
    set_err(err, err_len, "keystore URL has no scheme (expected e.g. sqlite:/path/to/kms.db)");
    r = KMS_ERR_CONFIG;
    goto out;
  }
  scheme_len = (size_t)(colon - url);
  for (i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
    if (strlen(backends[i]->scheme) == scheme_len &&
        strncmp(backends[i]->scheme, url, scheme_len) == 0) {
      ops = backends[i];
      break;
    }
  }
  if (ops == NULL) {
    /*
     * Echo only the scheme: the rest of a URL (a PostgreSQL one, say) may carry
     * a password, and this message goes to the log.
     */
    set_err(err, err_len, "unknown keystore URL scheme \"%.*s\" (supported: sqlite)",
            (int)(scheme_len < SCHEME_ECHO_MAX ? scheme_len : SCHEME_ECHO_MAX), url);
    r = KMS_ERR_CONFIG;
    goto out;
  }
  /* The backend parses the rest: each has its own location syntax. */
  r = ops->open(out, colon + 1, err, err_len);
  if (r == KMS_OK && (*out == NULL || (*out)->ops != ops)) {
    keystore_close(*out);
    *out = NULL;
    r = KMS_ERR_INTERNAL;
  }
out:
  return r;
}

void keystore_close(keystore *ks) {
  if (ks == NULL) {
    return;
  }
  ks->ops->close(ks);
}

int keystore_schema_version(keystore *ks, int *out_version) {
  int r;

  if (out_version == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  *out_version = 0;
  if (ks == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = ks->ops->schema_version(ks, out_version);
  if (r != KMS_OK) {
    *out_version = 0;
  }
  return r;
}

int keystore_tenant_create(keystore *ks, const struct ks_kek *kek) {
  if (ks == NULL || !valid_new_kek(kek) || kek->version != 1) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->tenant_create(ks, kek);
}

int keystore_tenant_get(keystore *ks, const char *tenant_id, struct ks_tenant *out) {
  int r;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Outputs are zeroed on entry and filled only on success. */
  memset(out, 0, sizeof(*out));
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = ks->ops->tenant_get(ks, tenant_id, out);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int keystore_kek_get(keystore *ks, const char *tenant_id, uint32_t version,
                     struct ks_kek *out) {
  int r;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  /* Versions start at 1; 0 names nothing, like any other unknown version. */
  if (version == 0) {
    return KMS_ERR_NOT_FOUND;
  }
  r = ks->ops->kek_get(ks, tenant_id, version, out);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int keystore_kek_current(keystore *ks, const char *tenant_id, struct ks_kek *out) {
  int r;

  if (out == NULL) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  memset(out, 0, sizeof(*out));
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  r = ks->ops->kek_current(ks, tenant_id, out);
  if (r != KMS_OK) {
    memset(out, 0, sizeof(*out));
  }
  return r;
}

int keystore_kek_add_version(keystore *ks, const struct ks_kek *kek) {
  /* The backend checks the number against the current version, under its lock. */
  if (ks == NULL || !valid_new_kek(kek)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  return ks->ops->kek_add_version(ks, kek);
}

int keystore_kek_reserve_uses(keystore *ks, const char *tenant_id, uint32_t version,
                              uint64_t n, uint64_t limit, uint64_t *out_total) {
  int r;

  if (out_total != NULL) {
    *out_total = 0;
  }
  if (ks == NULL || !valid_tenant_id(tenant_id)) {
    return KMS_ERR_INVALID_ARGUMENT;
  }
  if (version == 0) {
    return KMS_ERR_NOT_FOUND;
  }
  r = ks->ops->kek_reserve_uses(ks, tenant_id, version, n, limit, out_total);
  if (r != KMS_OK && out_total != NULL) {
    *out_total = 0;
  }
  return r;
}
