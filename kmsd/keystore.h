/* The keystore: durable tenants and KEK versions, behind a backend-neutral interface. */
#ifndef KMSD_KEYSTORE_H
#define KMSD_KEYSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "hsm.h"

/*
 * Callers see only this interface; keystore_sqlite.c is the one backend today
 * and the only file that speaks SQL. A PostgreSQL backend (several kmsd
 * replicas) implements struct keystore_ops and is picked by the URL scheme in
 * keystore_open.
 *
 * A keystore handle is used by one thread at a time; kmsd opens one per worker.
 * Every function returns KMS_OK or an error code: KMS_ERR_NOT_FOUND,
 * KMS_ERR_ALREADY_EXISTS, KMS_ERR_KEY_LIMIT, KMS_ERR_UNAVAILABLE (database
 * busy or I/O failure: nothing changed), KMS_ERR_INTERNAL.
 */

#define KS_TENANT_ID_MAX 64

enum ks_kek_state {
  KS_KEK_ACTIVE = 1,       /* encrypts and decrypts */
  KS_KEK_DECRYPT_ONLY = 2, /* after rotation */
  KS_KEK_DISABLED = 3,
  KS_KEK_PENDING_DESTRUCTION = 4,
  KS_KEK_DESTROYED = 5,
};

enum ks_tenant_state {
  KS_TENANT_ACTIVE = 1,
  KS_TENANT_DISABLED = 2,
};

struct ks_tenant {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  int state;                /* enum ks_tenant_state */
  uint32_t current_version; /* newest KEK version */
  int64_t created_ms;       /* UTC, milliseconds since the epoch */
};

struct ks_kek {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  uint32_t version; /* 1, 2, ... per tenant */
  int state;        /* enum ks_kek_state */
  uint32_t wrap_mech;
  uint32_t root_version;
  uint8_t token[HSM_KEY_TOKEN_MAX]; /* the KEK wrapped under the root key */
  size_t token_len;
  int64_t created_ms;
  uint64_t uses; /* encryptions reserved so far (see ks_kek_reserve_uses) */
};

typedef struct keystore keystore;

/*
 * keystore_open opens the keystore at |url| ("sqlite:/path/to/file.db"),
 * creating it if needed, and brings its schema to the newest version (each
 * migration in its own transaction, recorded in a schema_version table).
 */
int keystore_open(keystore **out, const char *url, char *err, size_t err_len);
void keystore_close(keystore *ks);

/* keystore_schema_version reports the schema version in use. */
int keystore_schema_version(keystore *ks, int *out_version);

/*
 * keystore_tenant_create inserts the tenant and its first KEK version (|kek|,
 * version 1, state active) in one transaction. KMS_ERR_ALREADY_EXISTS if the
 * tenant exists (nothing changes).
 */
int keystore_tenant_create(keystore *ks, const struct ks_kek *kek);

int keystore_tenant_get(keystore *ks, const char *tenant_id, struct ks_tenant *out);

/* keystore_kek_get reads one version; KMS_ERR_NOT_FOUND if tenant or version is unknown. */
int keystore_kek_get(keystore *ks, const char *tenant_id, uint32_t version,
                     struct ks_kek *out);

/* keystore_kek_current reads the tenant's newest version. */
int keystore_kek_current(keystore *ks, const char *tenant_id, struct ks_kek *out);

/*
 * keystore_kek_add_version records |kek| (version = current + 1, state active)
 * and turns the previous active version decrypt-only, in one transaction.
 * KMS_ERR_ALREADY_EXISTS if that version exists (a concurrent rotation won).
 */
int keystore_kek_add_version(keystore *ks, const struct ks_kek *kek);

/*
 * keystore_kek_reserve_uses atomically adds |n| to the version's use counter
 * if the result stays <= |limit|, and writes the new total. KMS_ERR_KEY_LIMIT
 * (nothing changes) otherwise. Reservation happens before the uses, so a crash
 * can only waste uses, never forget them.
 */
int keystore_kek_reserve_uses(keystore *ks, const char *tenant_id, uint32_t version,
                              uint64_t n, uint64_t limit, uint64_t *out_total);

/* The backend interface (one per storage engine). */
struct keystore_ops {
  const char *scheme; /* URL scheme, e.g. "sqlite" */
  int (*open)(keystore **out, const char *location, char *err, size_t err_len);
  void (*close)(keystore *ks);
  int (*schema_version)(keystore *ks, int *out_version);
  int (*tenant_create)(keystore *ks, const struct ks_kek *kek);
  int (*tenant_get)(keystore *ks, const char *tenant_id, struct ks_tenant *out);
  int (*kek_get)(keystore *ks, const char *tenant_id, uint32_t version,
                 struct ks_kek *out);
  int (*kek_current)(keystore *ks, const char *tenant_id, struct ks_kek *out);
  int (*kek_add_version)(keystore *ks, const struct ks_kek *kek);
  int (*kek_reserve_uses)(keystore *ks, const char *tenant_id, uint32_t version,
                          uint64_t n, uint64_t limit, uint64_t *out_total);
};

/* Every backend's handle starts with this, so keystore.c can dispatch. */
struct keystore {
  const struct keystore_ops *ops;
};

extern const struct keystore_ops keystore_sqlite_ops;

#endif
