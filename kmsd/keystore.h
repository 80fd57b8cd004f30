/* The keystore: durable tenants, KEK versions and their lifecycle, behind a backend-neutral interface. */
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
  KS_TENANT_DISABLED = 2,              /* suspended: nothing works until enabled */
  KS_TENANT_PENDING_DESTRUCTION = 3,   /* nothing works; cancellable until due */
  KS_TENANT_DESTROYED = 4,             /* every key token deleted */
};

/* A set of states, for "change only if now in one of these". */
#define KS_STATE_BIT(s) (1u << (unsigned)(s))

#define KS_PRINCIPAL_MAX 255 /* as identity.h: IDENTITY_MAX - 1 */

struct ks_tenant {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  int state;                /* enum ks_tenant_state */
  uint32_t current_version; /* newest KEK version */
  int64_t created_ms;       /* UTC, milliseconds since the epoch */
  /* Lifecycle (schema 2): who changed the state last, and when. */
  int64_t state_changed_ms;
  char state_changed_by[KS_PRINCIPAL_MAX + 1];
  uint32_t rotation_period_days;   /* 0: kmsd's default */
  int64_t destroy_after_ms;        /* pending destruction: when it falls due */
  int64_t current_created_ms;      /* creation of the newest version (rotation schedule) */
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
  int tenant_state; /* read with the version (enum ks_tenant_state); ignored on writes */
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

/* ---- Key lifecycle (schema 2; kmsd/lifecycle.c, docs/LIFECYCLE.md) ---------------- */

/* One KEK version as officers see it (no key token). */
struct ks_version_info {
  uint32_t version;
  int state; /* enum ks_kek_state */
  uint32_t root_version;
  int64_t created_ms;
  int64_t state_changed_ms;
  char state_changed_by[KS_PRINCIPAL_MAX + 1];
  uint64_t uses;
  int64_t destroy_after_ms;
};

/* One entry of a tenant's history: every state change, request and approval. */
struct ks_event {
  int64_t at_ms;
  uint32_t version; /* 0: the tenant as a whole */
  char event[32];
  char by[KS_PRINCIPAL_MAX + 1];
  char detail[160];
};

/*
 * A state change. |version| 0 names the tenant. It applies only if the target
 * is now in one of |from_states| (KS_STATE_BIT mask); else
 * KMS_ERR_FAILED_PRECONDITION and *out_state says the state it is in.
 * |to_state| 0 restores the state from before pending destruction. A version
 * is active only while it is the tenant's current one: asking for active on
 * an older version gives decrypt-only. Moving to pending destruction records
 * |destroy_after_ms| and |request_id|. The change and its event (|event|,
 * |by|, |detail|) are one transaction.
 */
struct ks_change {
  const char *tenant_id;
  uint32_t version;
  unsigned from_states;
  int to_state;
  int64_t destroy_after_ms;
  uint64_t request_id;
  const char *by;
  const char *event;
  const char *detail; /* may be NULL */
};

enum ks_action {
  KS_ACTION_DISABLE_TENANT = 1,
  KS_ACTION_DESTROY_TENANT = 2,
  KS_ACTION_DESTROY_VERSION = 3,
};

enum ks_request_state {
  KS_REQUEST_PENDING = 1,
  KS_REQUEST_EXECUTED = 2,
  KS_REQUEST_EXPIRED = 3,
  KS_REQUEST_CANCELLED = 4,
};

#define KS_APPROVERS_MAX 8 /* approvals_required is at most this */

/* A dual-control request: an action that takes effect after enough approvals. */
struct ks_request {
  uint64_t id;
  int action; /* enum ks_action */
  char tenant_id[KS_TENANT_ID_MAX + 1];
  uint32_t version;
  uint32_t waiting_days;
  char requested_by[KS_PRINCIPAL_MAX + 1];
  int64_t requested_ms;
  int64_t expires_ms;
  uint32_t approvals_required; /* distinct officers, the requester included */
  int state;                   /* enum ks_request_state */
  int64_t closed_ms;
  char approved_by[KS_APPROVERS_MAX][KS_PRINCIPAL_MAX + 1]; /* the requester first */
  size_t n_approved;
};

/* Why keystore_request_approve refused (with KMS_ERR_FAILED_PRECONDITION). */
enum ks_approve_refusal {
  KS_APPROVE_OK = 0,
  KS_APPROVE_SELF = 1,      /* the requester cannot approve */
  KS_APPROVE_TWICE = 2,     /* this officer approved already */
  KS_APPROVE_EXPIRED = 3,   /* the window closed (the request is now expired) */
  KS_APPROVE_CLOSED = 4,    /* executed or cancelled */
  KS_APPROVE_TARGET = 5,    /* the target's state no longer allows the action */
};

/* What a destruction deleted, and on whose word. */
struct ks_receipt {
  uint64_t id;
  char tenant_id[KS_TENANT_ID_MAX + 1];
  uint32_t version;      /* 0: the whole tenant */
  char versions[512];    /* the versions whose tokens were deleted, "1,2,3" */
  uint64_t request_id;
  char requested_by[KS_PRINCIPAL_MAX + 1];
  char approved_by[KS_APPROVERS_MAX][KS_PRINCIPAL_MAX + 1];
  size_t n_approved;
  int64_t requested_ms;
  int64_t approved_ms;
  int64_t destroyed_ms;
};

/* A target whose destruction fell due. */
struct ks_due {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  uint32_t version; /* 0: the whole tenant */
};

/*
 * Lists are allocated by the keystore (malloc) and freed by the caller with
 * free(). An empty list is *out NULL, *out_n 0.
 */

/* keystore_tenant_list lists tenants with ids greater than |after| ("" or NULL: from the start). */
int keystore_tenant_list(keystore *ks, const char *after, size_t limit,
                         struct ks_tenant **out, size_t *out_n);

/* keystore_kek_list lists the tenant's versions, oldest first. */
int keystore_kek_list(keystore *ks, const char *tenant_id, struct ks_version_info **out,
                      size_t *out_n);

/* keystore_event_list returns the newest |limit| events of the tenant, oldest first. */
int keystore_event_list(keystore *ks, const char *tenant_id, size_t limit,
                        struct ks_event **out, size_t *out_n);

/* An event with its tenant, for listings across tenants. */
struct ks_event_row {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  struct ks_event e;
};

/*
 * keystore_event_range returns, for the audit export, the whole history up to
 * |to_ms| (exclusive) of every tenant (or only |tenant_id|; NULL/"": all) that
 * has an event in [|from_ms|, |to_ms|), by tenant then oldest first: the states
 * before the period are replayed from it. At most |limit| rows; *out_more is 1
 * when there were more.
 */
int keystore_event_range(keystore *ks, const char *tenant_id, int64_t from_ms, int64_t to_ms,
                         size_t limit, struct ks_event_row **out, size_t *out_n, int *out_more);

/* keystore_event_add records an event that changes no state (e.g. a refused approval). */
int keystore_event_add(keystore *ks, const char *tenant_id, uint32_t version,
                       const char *event, const char *by, const char *detail);

/*
 * keystore_kek_rotate records |kek| as the next version like
 * keystore_kek_add_version, if the tenant is active, with a "rotated" event by
 * |by| (|reason| as detail). KMS_ERR_FAILED_PRECONDITION if the tenant is not
 * active.
 */
int keystore_kek_rotate(keystore *ks, const struct ks_kek *kek, const char *by,
                        const char *reason);

/* keystore_change_state applies |c| (see struct ks_change). */
int keystore_change_state(keystore *ks, const struct ks_change *c, int *out_state);

/* keystore_tenant_set_rotation sets the tenant's rotation period (0: kmsd's default). */
int keystore_tenant_set_rotation(keystore *ks, const char *tenant_id, uint32_t days,
                                 const char *by);

/*
 * keystore_rotation_due lists up to |cap| active tenants whose current
 * version is older than their rotation period (the tenant's own, else
 * |default_days|; 0 means never), as their current KEKs.
 */
int keystore_rotation_due(keystore *ks, int64_t now_ms, uint32_t default_days,
                          struct ks_kek *out, size_t cap, size_t *out_n);

/*
 * keystore_request_create records |req| (state pending, the requester's own
 * approval included) and sets req->id. KMS_ERR_ALREADY_EXISTS if a pending
 * request for the same action and target exists; its id is then in req->id.
 */
int keystore_request_create(keystore *ks, struct ks_request *req);

int keystore_request_get(keystore *ks, uint64_t id, struct ks_request *out);

/* keystore_request_list lists requests (pending only unless |include_closed|), oldest first. */
int keystore_request_list(keystore *ks, const char *tenant_id, int include_closed,
                          struct ks_request **out, size_t *out_n);

/*
 * keystore_request_approve records |approver|'s approval of request |id| and,
 * if that makes enough, executes the action in the same transaction:
 * disable_tenant disables the tenant; destroy_* moves the target to pending
 * destruction, due |waiting_days| after |now_ms|. *out is the request as it
 * is afterwards; *out_executed is 1 if the action took effect.
 * KMS_ERR_FAILED_PRECONDITION with *out_refusal saying why (nothing changes,
 * except that a request past its window is marked expired).
 */
int keystore_request_approve(keystore *ks, uint64_t id, const char *approver, int64_t now_ms,
                             struct ks_request *out, int *out_executed, int *out_refusal);

/*
 * keystore_request_cancel closes the pending requests of |action| on the
 * target (version 0: the tenant) as cancelled by |by|; *out_n says how many.
 */
int keystore_request_cancel(keystore *ks, const char *tenant_id, uint32_t version,
                            int action, const char *by, size_t *out_n);

/* keystore_requests_expire marks pending requests past their window expired. */
int keystore_requests_expire(keystore *ks, int64_t now_ms, size_t *out_n);

/* keystore_destruction_due lists up to |cap| targets whose waiting period ended. */
int keystore_destruction_due(keystore *ks, int64_t now_ms, struct ks_due *out, size_t cap,
                             size_t *out_n);

/*
 * keystore_destroy crypto-shreds a target that is pending destruction and
 * due: deletes the key tokens (the tenant's every version, or the one
 * version), marks them destroyed, and records and returns the receipt, in
 * one transaction. KMS_ERR_FAILED_PRECONDITION if not pending or not due.
 */
int keystore_destroy(keystore *ks, const char *tenant_id, uint32_t version, int64_t now_ms,
                     struct ks_receipt *out);

/*
 * keystore_shred_sync makes deletions final in the files: for SQLite, a
 * truncating WAL checkpoint so no old page with a deleted token lingers in the
 * -wal file (secure_delete already zeroes the database pages).
 * KMS_ERR_UNAVAILABLE if other readers kept it from completing (retry later).
 */
int keystore_shred_sync(keystore *ks);

/*
 * keystore_backup writes a consistent snapshot of the whole keystore to |path|
 * while other handles keep reading and writing: for SQLite, the online backup
 * API copies every page from one read snapshot into |path|.tmp, which is
 * fsynced and renamed to |path| (then the directory is fsynced). An existing
 * |path| is replaced. KMS_ERR_UNAVAILABLE if the database stayed busy, KMS_ERR_IO
 * if the file could not be written (the temporary file is removed).
 */
int keystore_backup(keystore *ks, const char *path);

/* keystore_receipt_list lists destruction receipts, oldest first (tenant NULL/"": all). */
int keystore_receipt_list(keystore *ks, const char *tenant_id, struct ks_receipt **out,
                          size_t *out_n);

/* ---- Session keys (schema 3; kmsd/sessions.c, docs/SESSIONS.md) ------------------ */

#define KS_SESSION_ID_MAX 128
#define KS_SESSION_WRAPPED_MAX 128 /* a wrapped session key (kmsd/sessions.c: 65 bytes) */
#define KS_SESSION_METADATA_MAX 5200 /* encoded metadata (kmsd/sessions.c) */

enum ks_session_state {
  KS_SESSION_OPEN = 1,     /* the key seals and opens */
  KS_SESSION_CLOSED = 2,   /* no new encryption; GetSessionKey still answers */
  KS_SESSION_SHREDDED = 3, /* wrapped key and metadata deleted: the key is gone */
};

/*
 * One session. |wrapped| is the session key wrapped under KEK version
 * |kek_version| of the tenant; |metadata| is opaque to the keystore (the
 * caller's encoding). A shredded session keeps its row without either, so
 * its id cannot be opened again and the listing shows who shredded it.
 */
struct ks_session {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  char session_id[KS_SESSION_ID_MAX + 1];
  int state; /* enum ks_session_state */
  uint32_t kek_version;
  uint8_t wrapped[KS_SESSION_WRAPPED_MAX];
  size_t wrapped_len;
  uint8_t metadata[KS_SESSION_METADATA_MAX];
  size_t metadata_len;
  int64_t created_ms;
  char created_by[KS_PRINCIPAL_MAX + 1];
  int64_t closed_ms; /* 0: not closed */
  char closed_by[KS_PRINCIPAL_MAX + 1];
  int64_t shredded_ms; /* 0: not shredded */
  char shredded_by[KS_PRINCIPAL_MAX + 1];
};

/* What a ShredSession destroyed. */
struct ks_session_receipt {
  uint64_t id;
  char tenant_id[KS_TENANT_ID_MAX + 1];
  char session_id[KS_SESSION_ID_MAX + 1];
  uint32_t kek_version;
  int64_t created_ms;
  int64_t shredded_ms;
  char shredded_by[KS_PRINCIPAL_MAX + 1];
};

/* A ListSessions filter and page position. */
struct ks_session_filter {
  const char *tenant_id;
  int64_t created_from_ms;  /* inclusive */
  int64_t created_to_ms;    /* exclusive; 0: no bound */
  int state;                /* 0: any */
  int64_t after_created_ms; /* page position: rows after (after_created_ms, after_session) */
  const char *after_session; /* NULL or "": from the start */
  size_t limit;
};

/* A pending background re-wrap of a tenant's sessions after a rotation. */
struct ks_rewrap_job {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  uint32_t target_version;
  char after[KS_SESSION_ID_MAX + 1]; /* sessions up to this id are done */
};

/* One re-wrapped session: replaces |old_version|'s wrapped key only if still that one. */
struct ks_rewrap_update {
  const char *session_id;
  uint32_t old_version;
  const uint8_t *wrapped;
  size_t wrapped_len;
};

/*
 * keystore_session_create records |s| (state open) with its wrapped key.
 * KMS_ERR_ALREADY_EXISTS if the tenant has a session of that id in any state
 * (a shredded id is never reused), then *out_state holds its state.
 */
int keystore_session_create(keystore *ks, const struct ks_session *s, int *out_state);

/*
 * keystore_session_get reads a session and, from the same snapshot, the KEK
 * version wrapping it (with its token) and its tenant's state. One indexed
 * lookup whatever the number of sessions. KMS_ERR_NOT_FOUND if no such session.
 */
int keystore_session_get(keystore *ks, const char *tenant_id, const char *session_id,
                         struct ks_session *out, struct ks_kek *out_kek);

/*
 * keystore_session_close moves an open session to closed (by |by| at
 * |now_ms|); a closed one stays as it is. *out is the session afterwards.
 * KMS_ERR_NOT_FOUND; KMS_ERR_FAILED_PRECONDITION if shredded.
 */
int keystore_session_close(keystore *ks, const char *tenant_id, const char *session_id,
                           const char *by, int64_t now_ms, struct ks_session *out);

/*
 * keystore_session_shred deletes the session's wrapped key and metadata
 * (secure_delete zeroes the bytes; keystore_shred_sync then clears the WAL),
 * marks it shredded by |by|, and records and returns the receipt, in one
 * transaction. KMS_ERR_NOT_FOUND; KMS_ERR_FAILED_PRECONDITION if already shredded.
 */
int keystore_session_shred(keystore *ks, const char *tenant_id, const char *session_id,
                           const char *by, int64_t now_ms, struct ks_session_receipt *out);

/*
 * keystore_session_list lists the sessions matching |f| (up to f->limit),
 * ordered by (created_ms, session_id), through the (tenant_id, created_ms)
 * index. Wrapped keys are not read (wrapped_len 0). *out_more is 1 if more follow.
 */
int keystore_session_list(keystore *ks, const struct ks_session_filter *f,
                          struct ks_session **out, size_t *out_n, int *out_more);

/* keystore_rewrap_jobs lists up to |cap| pending re-wrap jobs (one per tenant). */
int keystore_rewrap_jobs(keystore *ks, struct ks_rewrap_job *out, size_t cap, size_t *out_n);

/*
 * keystore_rewrap_batch reads up to |limit| sessions of |job| after its
 * cursor, in session id order, that still hold a key (not shredded), with
 * their wrapped keys.
 */
int keystore_rewrap_batch(keystore *ks, const struct ks_rewrap_job *job, size_t limit,
                          struct ks_session *out, size_t *out_n);

/*
 * keystore_rewrap_commit stores the re-wrapped keys |u| (each only if the
 * session still has its old version and is not shredded) and moves the job's
 * cursor to |after|, in one transaction; with |done| the job is removed
 * instead. Nothing happens if the job changed meanwhile (a new rotation
 * restarted it): *out_stale is then 1. *out_moved counts stored keys.
 */
int keystore_rewrap_commit(keystore *ks, const struct ks_rewrap_job *job,
                           const struct ks_rewrap_update *u, size_t n, const char *after,
                           int done, size_t *out_moved, int *out_stale);

/* ---- Root key rotation (schema 4; kmsd/rootjob.c, docs/LIFECYCLE.md) -------------- */

enum ks_root_state {
  KS_ROOT_CURRENT = 1,   /* new KEKs are wrapped under it; one at a time */
  KS_ROOT_RETIRED = 2,   /* older, or seen but never current: tokens move off it */
  KS_ROOT_DESTROYED = 3, /* no token referred to it any more: destroyed in the HSM */
};

/* A root version as the keystore knows it. */
struct ks_root {
  uint32_t version;
  int trusted; /* 1: made by the key ceremony (re-wrappable); 0: legacy; -1: not recorded */
  int state;   /* enum ks_root_state; 0: not recorded, only key tokens name it */
  int64_t seen_ms;
  int64_t current_since_ms; /* 0: never current */
  char current_by[KS_PRINCIPAL_MAX + 1];
  int64_t destroyed_ms;
  uint64_t key_tokens; /* key tokens wrapped under it (a destroyed KEK version has none) */
};

/* One key token to move to another root: read as old_*, written as the rest. */
struct ks_token_move {
  char tenant_id[KS_TENANT_ID_MAX + 1];
  uint32_t version;
  uint32_t old_root, old_mech;
  uint8_t old_token[HSM_KEY_TOKEN_MAX];
  size_t old_len;
  uint32_t root, mech;
  uint8_t token[HSM_KEY_TOKEN_MAX];
  size_t token_len;
};

/* keystore_root_note records root |version| found on the token (retired) unless known. */
int keystore_root_note(keystore *ks, uint32_t version, int trusted, int64_t now_ms);

/*
 * keystore_root_set_current makes |version| the current root (the previous one
 * retired) by |by|, in one transaction, and writes the previous current
 * version (0: none) to *out_previous (may be NULL). Nothing changes if it is
 * current already. KMS_ERR_FAILED_PRECONDITION if it was destroyed.
 */
int keystore_root_set_current(keystore *ks, uint32_t version, int trusted, const char *by,
                              int64_t now_ms, uint32_t *out_previous);

/*
 * keystore_root_list lists every recorded root and every root a key token
 * names, oldest first, each with its key token count. Free *out with free().
 * Counts every KEK version: fine for a status call, not for a request path.
 */
int keystore_root_list(keystore *ks, struct ks_root **out, size_t *out_n);

/*
 * keystore_state_gen reads the keystore's change counter (schema 6): it moves
 * with every change of a KEK version's or a tenant's state, a new or removed
 * version or tenant, whoever makes it (kmsd/kekcache.h, revalidation).
 */
int keystore_state_gen(keystore *ks, uint64_t *out);

/*
 * keystore_root_pending reads up to |cap| key tokens wrapped under a trusted
 * root other than |current| (the re-wrap job's next batch; legacy roots'
 * tokens are never listed), oldest root first, old_* filled.
 */
int keystore_root_pending(keystore *ks, uint32_t current, struct ks_token_move *out, size_t cap,
                          size_t *out_n);

/*
 * keystore_root_move_tokens stores the re-wrapped tokens |m| in one
 * transaction, each only if its row still holds old_token under old_root (a
 * token destroyed or moved meanwhile stays as it is). *out_moved counts rows
 * changed.
 */
int keystore_root_move_tokens(keystore *ks, const struct ks_token_move *m, size_t n,
                              size_t *out_moved);

/*
 * keystore_root_destroyed records that retired root |version| is destroyed,
 * in a transaction that first checks no key token names it.
 * KMS_ERR_FAILED_PRECONDITION (nothing changes) if one does, or the root is
 * current, unknown or destroyed already.
 */
int keystore_root_destroyed(keystore *ks, uint32_t version, int64_t now_ms);

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
  /* Key lifecycle (schema 2). */
  int (*tenant_list)(keystore *ks, const char *after, size_t limit, struct ks_tenant **out,
                     size_t *out_n);
  int (*kek_list)(keystore *ks, const char *tenant_id, struct ks_version_info **out,
                  size_t *out_n);
  int (*event_list)(keystore *ks, const char *tenant_id, size_t limit, struct ks_event **out,
                    size_t *out_n);
  int (*event_add)(keystore *ks, const char *tenant_id, uint32_t version, const char *event,
                   const char *by, const char *detail);
  int (*kek_rotate)(keystore *ks, const struct ks_kek *kek, const char *by,
                    const char *reason);
  int (*change_state)(keystore *ks, const struct ks_change *c, int *out_state);
  int (*tenant_set_rotation)(keystore *ks, const char *tenant_id, uint32_t days,
                             const char *by);
  int (*rotation_due)(keystore *ks, int64_t now_ms, uint32_t default_days, struct ks_kek *out,
                      size_t cap, size_t *out_n);
  int (*request_create)(keystore *ks, struct ks_request *req);
  int (*request_get)(keystore *ks, uint64_t id, struct ks_request *out);
  int (*request_list)(keystore *ks, const char *tenant_id, int include_closed,
                      struct ks_request **out, size_t *out_n);
  int (*request_approve)(keystore *ks, uint64_t id, const char *approver, int64_t now_ms,
                         struct ks_request *out, int *out_executed, int *out_refusal);
  int (*request_cancel)(keystore *ks, const char *tenant_id, uint32_t version, int action,
                        const char *by, size_t *out_n);
  int (*requests_expire)(keystore *ks, int64_t now_ms, size_t *out_n);
  int (*destruction_due)(keystore *ks, int64_t now_ms, struct ks_due *out, size_t cap,
                         size_t *out_n);
  int (*destroy)(keystore *ks, const char *tenant_id, uint32_t version, int64_t now_ms,
                 struct ks_receipt *out);
  int (*shred_sync)(keystore *ks);
  int (*receipt_list)(keystore *ks, const char *tenant_id, struct ks_receipt **out,
                      size_t *out_n);
  int (*event_range)(keystore *ks, const char *tenant_id, int64_t from_ms, int64_t to_ms,
                     size_t limit, struct ks_event_row **out, size_t *out_n, int *out_more);
  /* Session keys (schema 3). */
  int (*session_create)(keystore *ks, const struct ks_session *s, int *out_state);
  int (*session_get)(keystore *ks, const char *tenant_id, const char *session_id,
                     struct ks_session *out, struct ks_kek *out_kek);
  int (*session_close)(keystore *ks, const char *tenant_id, const char *session_id,
                       const char *by, int64_t now_ms, struct ks_session *out);
  int (*session_shred)(keystore *ks, const char *tenant_id, const char *session_id,
                       const char *by, int64_t now_ms, struct ks_session_receipt *out);
  int (*session_list)(keystore *ks, const struct ks_session_filter *f, struct ks_session **out,
                      size_t *out_n, int *out_more);
  int (*rewrap_jobs)(keystore *ks, struct ks_rewrap_job *out, size_t cap, size_t *out_n);
  int (*rewrap_batch)(keystore *ks, const struct ks_rewrap_job *job, size_t limit,
                      struct ks_session *out, size_t *out_n);
  int (*rewrap_commit)(keystore *ks, const struct ks_rewrap_job *job,
                       const struct ks_rewrap_update *u, size_t n, const char *after, int done,
                       size_t *out_moved, int *out_stale);
  int (*backup)(keystore *ks, const char *path); /* NULL: the backend cannot */
  /* Root key rotation (schema 4). */
  int (*root_note)(keystore *ks, uint32_t version, int trusted, int64_t now_ms);
  int (*root_set_current)(keystore *ks, uint32_t version, int trusted, const char *by,
                          int64_t now_ms, uint32_t *out_previous);
  int (*root_list)(keystore *ks, struct ks_root **out, size_t *out_n);
  int (*root_pending)(keystore *ks, uint32_t current, struct ks_token_move *out, size_t cap,
                      size_t *out_n);
  int (*root_move_tokens)(keystore *ks, const struct ks_token_move *m, size_t n,
                          size_t *out_moved);
  int (*root_destroyed)(keystore *ks, uint32_t version, int64_t now_ms);
  int (*state_gen)(keystore *ks, uint64_t *out);
};

/* Every backend's handle starts with this, so keystore.c can dispatch. */
struct keystore {
  const struct keystore_ops *ops;
};

extern const struct keystore_ops keystore_sqlite_ops;

#endif
