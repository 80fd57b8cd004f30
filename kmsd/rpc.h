/* RPC dispatch: decode, validate, authorise, run on a worker, answer. */
#ifndef KMSD_RPC_H
#define KMSD_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "keyops.h"
#include "transport.h"
#include "workers.h"

struct audit;
struct rootjob;

struct rpc {
  const struct kmsd_config *cfg;
  struct audit *audit; /* every answer waits for its audit record (docs/AUDIT.md) */
  workers *pool;
  struct keyops ops;
  int draining; /* set on SIGTERM: new requests get UNAVAILABLE */
  struct limits *limits; /* per-principal rate limit (kmsd/limiter.h); NULL: none */
  struct rootjob *rootjob; /* root rotation (kmsd/rootjob.h); NULL: RootRotate refused */
};

/*
 * rpc_on_frame handles one frame's payload from |c|. It never keeps |payload|.
 * Malformed protobuf closes the connection after an INVALID_ARGUMENT answer;
 * every other failure is an answer with the request's id and the connection
 * stays usable.
 */
void rpc_on_frame(struct rpc *rpc, conn *c, const uint8_t *payload, size_t len);

/*
 * rpc_check_policy_vocabulary returns KMS_OK if every method's policy
 * operation names are in the policy vocabulary, else KMS_ERR_INTERNAL with the
 * method in |err|. kmsd checks it at start, so no method escapes the policy.
 */
int rpc_check_policy_vocabulary(char *err, size_t err_len);

/* rpc_send_error queues an error response (status from |err|) on |c|. */
void rpc_send_error(conn *c, uint64_t request_id, int err, const char *message);

#endif
