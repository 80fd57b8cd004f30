/* The audit log: one durable JSON record per request, group commit, Merkle tree, signed
 * checkpoints. */
#ifndef KMSD_AUDIT_H
#define KMSD_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "hsm.h"
#include "kms_note.h"
#include "kms.pb-c.h"

/*
 * Life of a record (docs/AUDIT.md): the loop builds it when a request's
 * outcome is known (audit_submit), a dedicated writer thread takes every
 * record queued so far, appends them with one write() and one fdatasync(),
 * extends the Merkle tree, and hands the batch back to the loop, whose
 * done() callbacks send the held responses. So nothing is answered before its
 * record is on disk, and one disk flush serves many requests.
 *
 * If a batch cannot be written (ENOSPC, EFBIG, EIO) it is cut off the file,
 * done() gets KMS_ERR_UNAVAILABLE, and the log is "failing" until a later
 * batch is written: rpc answers key operations UNAVAILABLE meanwhile.
 */

typedef struct audit audit;

#define AUDIT_SIGN_KEY_ID "tenantkms-audit-v1"
#define AUDIT_HMAC_KEY_ID "tenantkms-audit-hmac-v1"
#define AUDIT_ROTATE_DEFAULT (64ULL << 20)
#define AUDIT_CHECKPOINT_MS_DEFAULT 60000u

struct audit_config {
  const char *dir;         /* audit-NNNNNNNN.jsonl, checkpoints, verifier-key */
  const char *node;        /* node name: the log's origin is "<node>/tenantkms-audit" */
  uint64_t rotate_bytes;   /* start the next file past this size; 0: default */
  unsigned checkpoint_ms;  /* sign a checkpoint this often while records arrive; 0: default */
  int sign_prefer;         /* HSM_SIG_AUTO, or force a type (tests) */
  const char *sign_key_id; /* CKA_ID of the signing key pair; NULL: AUDIT_SIGN_KEY_ID */
};

/* One record in flight. Embed it in the caller's own structure. */
struct audit_item {
  /* Called on the loop thread: KMS_OK if the record is durable, else an error. */
  void (*done)(struct audit_item *item, int status);
  struct audit_item *next; /* private */
  char *body;              /* private: the record without its sequence number */
  size_t body_len;         /* private */
  uint64_t seq;            /* set before done() when durable */
  int status;              /* private: handed to done() */
};

/* What a record says. Strings may be NULL (written as null). Never key material. */
struct audit_fields {
  uint64_t request_id;
  const char *principal;
  const char *peer;
  const char *op;
  const char *tenant;
  uint32_t kek_version; /* 0: none */
  const char *session;  /* session id, recorded as a keyed HMAC like a session_id value */
  Tkms__ContextEntry *const *context; /* keys in clear, values as keyed HMACs */
  size_t n_context;
  Tkms__ContextEntry *const *attributes; /* access attributes (docs/POLICY.md), as context */
  size_t n_attributes;
  int status; /* wire status (tkms.StatusCode number) */
};

/*
 * audit_open recovers the log in |cfg->dir| (creating it if needed): replays
 * every file into the tree, truncates an incomplete last line, checks the
 * tree against every signed checkpoint (refusing to start on a mismatch: the
 * log was altered and signing on would hide it), opens the signing and HMAC
 * keys in |h|, writes the verifier key file and starts the writer thread.
 * done() callbacks run on |base|. |err| says why on failure.
 */
int audit_open(audit **out, const struct audit_config *cfg, hsm *h, struct event_base *base,
               char *err, size_t err_len);

/*
 * audit_close writes what is queued, signs a final checkpoint, stops the
 * writer and runs the last done() callbacks. Call on the loop thread. NULL
 * is a no-op.
 */
void audit_close(audit *a);

/*
 * audit_submit builds the record for |f| and queues it. Any thread may call
 * it. |item->done| is called exactly once, on the loop thread, never from
 * within this call: with KMS_OK once the record is durable, else with an
 * error (also when the record could not be built: then this returns that
 * error too).
 */
int audit_submit(audit *a, struct audit_item *item, const struct audit_fields *f);

/* audit_pending counts records queued, being written, or awaiting done(). */
size_t audit_pending(audit *a);

/*
 * audit_healthy returns true while records are being written. When not, a
 * reason (no secrets: errno text and file) is written to |why|.
 */
bool audit_healthy(audit *a, char *why, size_t why_len);

/* audit_verifier_key writes the note verifier key (name+id+key) of the log. */
int audit_verifier_key(audit *a, char *out, size_t cap);

/* audit_size returns the number of durable records (the tree size). */
uint64_t audit_size(audit *a);

/* For the export (kmsd/audit_export.c): the log's directory and note verifier key. */
const char *audit_dir(const audit *a);
const struct kms_note_vkey *audit_vkey(const audit *a);

/*
 * audit_hmac_hex writes the keyed HMAC a record holds for the context entry
 * (|key|, |value|) as 32 hex digits (|out|: 33 bytes). Any thread.
 */
int audit_hmac_hex(audit *a, const char *key, const char *value, char *out);

/*
 * The context-value HMAC with a prepared key (docs/AUDIT.md):
 * HMAC-SHA256(K, key || 0x00 || value)[:16] as hex. audit_hmac_prepare makes
 * the keyed context once (no algorithm fetch per value); audit_hmac_compute
 * duplicates it per value, so one prepared context serves one thread at a
 * time. Exposed for the unit test that pins the output.
 */
struct evp_mac_ctx_st;
struct evp_mac_ctx_st *audit_hmac_prepare(const uint8_t *k, size_t k_len);
void audit_hmac_release(struct evp_mac_ctx_st *ctx);
int audit_hmac_compute(struct evp_mac_ctx_st *prepared, const char *key, const char *value,
                       char *out);

#endif
