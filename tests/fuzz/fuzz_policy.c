/* libFuzzer target: policy files (kmsd/policy.c) must be refused or loaded, never crash or leak. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kms_err.h"
#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Requests that reach every branch of the evaluator once a policy loads. */
static const struct policy_kv ctx_full[] = {
    {"session_id", "s-1"}, {"purpose", "transcription"}, {"purpose2", ""}};
static const struct policy_request requests[] = {
    {"spiffe://tenantkms.dev/recording", "GenerateDataKey", "acme", ctx_full, 2},
    {"spiffe://tenantkms.dev/ai", "Decrypt", "acme", ctx_full, 3},
    {"spiffe://tenantkms.dev/tenant/acme/integration", "Decrypt", "acme", NULL, 0},
    {"spiffe://tenantkms.dev/tenant/acme/integration", "Decrypt", "globex", NULL, 0},
    {"spiffe://tenantkms.dev/tenant/acme/integration", "ExportAudit", NULL, NULL, 0},
    {"cn:a", "Health", NULL, NULL, 0},
    {"spiffe://d/t/a/b", "CreateTenant", "t", ctx_full, 1},
    {"x", "NoSuchOperation", "t", NULL, 0},
};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char err[512];
  policy *p = NULL;
  int r = policy_parse_buf(&p, "fuzz.json", data, size, err, sizeof(err));
  if (r != KMS_OK) {
    /* Every refusal explains itself, in one line without double quotes. */
    if (err[0] == '\0' || strchr(err, '"') != NULL || strchr(err, '\n') != NULL) {
      __builtin_trap();
    }
    return 0;
  }
  if (p == NULL || policy_rule_count(p) == 0 || strlen(policy_digest(p)) != 64) {
    __builtin_trap();
  }
  for (size_t i = 0; i < sizeof(requests) / sizeof(requests[0]); i++) {
    struct policy_decision d;
    policy_evaluate(p, &requests[i], &d);
    /* Every allow names the rule that allowed it. */
    if (d.allowed && d.rule_id == NULL) {
      __builtin_trap();
    }
  }
  policy_free(p);
  return 0;
}
