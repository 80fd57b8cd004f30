/* Access policy: parses the JSON policy files (docs/POLICY.md) and decides requests. */
#ifndef KMSD_POLICY_H
#define KMSD_POLICY_H

#include <stddef.h>
#include <stdint.h>

/*
 * A policy is a set of rules loaded from one file or from every *.json file of
 * a directory. It is immutable once loaded, so any thread may evaluate it; the
 * owner (authz.c) swaps whole policies and never edits one.
 */
typedef struct policy policy;

/* Limits: a policy beyond them is refused rather than truncated. */
#define POLICY_FILE_MAX (1u << 20) /* bytes of one file */
#define POLICY_FILES_MAX 256       /* files in a policy directory */
#define POLICY_RULES_MAX 10000     /* rules in the whole policy */
#define POLICY_TENANTS_MAX 10000   /* tenant ids listed by one rule */
#define POLICY_VALUES_MAX 64       /* allowed values of one context key */
#define POLICY_PRINCIPAL_MAX 255   /* as identity.h: IDENTITY_MAX - 1 */
#define POLICY_RULE_ID_MAX 64
#define POLICY_DIGEST_HEX 65 /* SHA-256 as hex, NUL-terminated */

/*
 * The operation vocabulary: every name a rule may grant, including operations
 * that have no RPC yet (so example policies are complete). A rule naming any
 * other operation is refused. Health is the one operation with no tenant.
 */
size_t policy_op_count(void);
const char *policy_op_name(size_t i);

/* policy_op_known returns 1 if |name| is in the vocabulary, else 0. */
int policy_op_known(const char *name);

/*
 * policy_load reads |path|: a file, or a directory whose *.json files (names
 * not starting with '.') are read in bytewise-sorted order. All or nothing:
 * on any error nothing is returned and |err| holds one line naming the file
 * and either "LINE:COLUMN" (JSON syntax) or the JSON path of the offending
 * value (e.g. "rules[3].operations[1]"), then the reason. Files and the
 * directory must not be writable by others. Returns KMS_OK, KMS_ERR_CONFIG
 * (refused content) or KMS_ERR_IO (unreadable); |*out| is set only on success.
 */
int policy_load(policy **out, const char *path, char *err, size_t err_len);

/*
 * policy_parse_buf is policy_load on one in-memory file named |name| (unit
 * tests, the fuzzer). Same rules and messages.
 */
int policy_parse_buf(policy **out, const char *name, const uint8_t *buf, size_t len, char *err,
                     size_t err_len);

/* policy_free releases |p|; NULL is a no-op. */
void policy_free(policy *p);

/* Counts, and the SHA-256 over every file's name and bytes, for the load log line. */
size_t policy_rule_count(const policy *p);
size_t policy_file_count(const policy *p);
const char *policy_digest(const policy *p);

/* One entry of the request's encryption context. */
struct policy_kv {
  const char *key;
  const char *value;
};

struct policy_request {
  const char *principal; /* from identity.c: "spiffe://..." or "cn:NAME" */
  const char *operation; /* a vocabulary name */
  const char *tenant;    /* NULL: the request names no tenant (means every tenant) */
  const struct policy_kv *context;
  size_t n_context;
};

struct policy_decision {
  int allowed;
  const char *rule_id; /* deciding rule, NULL for the default deny; lives as long as the policy */
};

/*
 * policy_evaluate decides |req|. A matching deny rule wins over any allow
 * rule; without a matching allow rule the answer is deny. An unknown
 * operation, a NULL principal or a NULL policy is denied. Never fails.
 */
void policy_evaluate(const policy *p, const struct policy_request *req,
                     struct policy_decision *out);

#endif
