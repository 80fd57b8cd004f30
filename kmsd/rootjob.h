/* Root key rotation: RootRotate, RootStatus and the background re-wrap of every key token. */
#ifndef KMSD_ROOTJOB_H
#define KMSD_ROOTJOB_H

#include <stddef.h>
#include <stdint.h>

#include "hsm.h"
#include "kms.pb-c.h"
#include "workers.h"

/*
 * docs/LIFECYCLE.md, "Root key rotation". RootRotate makes the newest root on
 * the HSM token current (one keystore transaction, then the HSM layer); from
 * then on new KEKs wrap under it. The job, on its own thread with its own HSM
 * session and keystore handle, re-wraps every key token under an older
 * trusted root (hsm_kek_rewrap: the KEK never leaves the HSM) in small
 * transactions, at most root_rewrap_per_second tokens a second. What is left
 * is read from the keystore (tokens per root_version), so the job needs no
 * cursor: killed at any point, it resumes at the next start. Once no token
 * names an older root and root_retain_days have passed, that root is recorded
 * destroyed and destroyed in the HSM. Tokens under a legacy root cannot move
 * and never fail the job: they are counted and reported.
 */
typedef struct rootjob rootjob;

struct rootjob_config {
  unsigned per_second;  /* re-wrapped tokens per second; 0: as fast as the HSM goes */
  unsigned retain_days; /* keep an unreferenced old root this long after the rotation */
};

/*
 * rootjob_start records the roots found on the token in the keystore (the
 * current one too, the first time), then starts the job's thread. It works at
 * once if a rotation was left unfinished.
 */
int rootjob_start(rootjob **out, hsm *h, const char *ks_url, const struct rootjob_config *cfg,
                  char *err, size_t err_len);

/* rootjob_stop stops and joins the thread (a batch in flight is finished). NULL is a no-op. */
void rootjob_stop(rootjob *j);

/*
 * rootjob_rotate is RootRotate, on a worker: FAILED_PRECONDITION with a reason
 * in |why| if the token holds no trusted root newer than the current one.
 * Answers are allocated with the system allocator; free with
 * protobuf_c_message_free_unpacked(msg, NULL).
 */
int rootjob_rotate(rootjob *j, struct worker_ctx *w, const char *by, char *why, size_t why_len,
                   Tkms__RootRotateResponse **out);

/* rootjob_status is RootStatus, on a worker. */
int rootjob_status(rootjob *j, struct worker_ctx *w, char *why, size_t why_len,
                   Tkms__RootStatusResponse **out);

#endif
