/* Policy files: strict JSON parsing and validation, and the allow/deny evaluator (docs/POLICY.md).
 */
#include "policy.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "kms_err.h"
#include "kms_wire.h"

#define PLACEHOLDER "{tenant}"
#define PLACEHOLDER_LEN (sizeof(PLACEHOLDER) - 1)

/*
 * The vocabulary, from DESIGN.md's RPC list. GenerateDataKeyWithoutPlaintext
 * is its own name (the request's without_plaintext flag selects it) so a
 * service can be granted wrapped keys without ever seeing a plaintext one.
 * Order matters only for the bitmask; names are matched exactly.
 */
static const struct {
  const char *name;
  int has_tenant;
} vocabulary[] = {
    {"GenerateDataKey", 1},   {"GenerateDataKeyWithoutPlaintext", 1},
    {"Decrypt", 1},           {"ReEncrypt", 1},
    {"Encrypt", 1},           {"OpenSession", 1},
    {"GetSessionKey", 1},     {"CloseSession", 1},
    {"ShredSession", 1},      {"ListSessions", 1},
    {"CreateTenant", 1},      {"RotateKey", 1},
    {"ListKeys", 1},          {"DisableKey", 1},
    {"EnableKey", 1},         {"ScheduleDestruction", 1},
    {"CancelDestruction", 1}, {"Approve", 1},
    {"ExportAudit", 1},       {"Health", 0},
    {"Backup", 0},            {"RootRotate", 0},
    {"RootStatus", 0},
};
#define N_OPS (sizeof(vocabulary) / sizeof(vocabulary[0]))
_Static_assert(N_OPS <= 32, "operations are a 32-bit mask");

enum tenant_scope { TENANTS_ALL, TENANTS_BOUND, TENANTS_LIST };

struct condition {
  char *key;
  char **values; /* sorted */
  size_t n_values;
};

struct rule {
  char *id;
  int allow;
  char *principal;
  /* With a {tenant} placeholder: principal[0..prefix_len) and the suffix after it. */
  int is_pattern;
  size_t prefix_len;
  const char *suffix;
  uint32_t ops;
  enum tenant_scope scope;
  char **tenants; /* sorted, for TENANTS_LIST */
  size_t n_tenants;
  char **required;
  size_t n_required;
  struct condition *conds;
  size_t n_conds;
};

struct policy {
  struct rule *rules;
  size_t n_rules, cap_rules;
  size_t n_files;
  EVP_MD_CTX *md;
  char digest[POLICY_DIGEST_HEX];
};

/* ---- Vocabulary -------------------------------------------------------------- */

size_t
policy_op_count(void)
{
  return N_OPS;
}

const char *
policy_op_name(size_t i)
{
  return i < N_OPS ? vocabulary[i].name : NULL;
}

static int
op_index(const char *name)
{
  if (name == NULL) {
    return -1;
  }
  for (size_t i = 0; i < N_OPS; i++) {
    if (strcmp(vocabulary[i].name, name) == 0) {
      return (int)i;
    }
  }
  return -1;
}

int
policy_op_known(const char *name)
{
  return op_index(name) >= 0;
}

/* ---- Errors --------------------------------------------------------------------- */

struct loader {
  policy *p;
  const char *file; /* as named in messages */
  char *err;
  size_t err_len;
};

/*
 * Messages end up in logs as reason="...": no double quotes, no control or
 * non-ASCII bytes, whatever the file contained.
 */
static void
sanitize(char *s)
{
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"') {
      *s = '\'';
    } else if (c < 0x20 || c >= 0x7f) {
      *s = '?';
    }
  }
}

static int __attribute__((format(printf, 4, 0)))
failv(struct loader *l, int code, const char *path, const char *fmt, va_list ap)
{
  if (l->err_len == 0) {
    return code;
  }
  int n = path != NULL ? snprintf(l->err, l->err_len, "%s: %s: ", l->file, path)
                       : snprintf(l->err, l->err_len, "%s: ", l->file);
  if (n >= 0 && (size_t)n < l->err_len) {
    vsnprintf(l->err + n, l->err_len - (size_t)n, fmt, ap);
  }
  sanitize(l->err);
  return code;
}

static int __attribute__((format(printf, 3, 4)))
fail(struct loader *l, const char *path, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int r = failv(l, KMS_ERR_CONFIG, path, fmt, ap);
  va_end(ap);
  return r;
}

static int __attribute__((format(printf, 3, 4)))
fail_io(struct loader *l, const char *path, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int r = failv(l, KMS_ERR_IO, path, fmt, ap);
  va_end(ap);
  return r;
}

/* A value quoted in a message: at most 48 bytes of it. */
struct shown {
  char s[56];
};

static struct shown
show(const char *v)
{
  struct shown out;
  size_t n = strlen(v);
  if (n > 48) {
    snprintf(out.s, sizeof(out.s), "%.45s...", v);
  } else {
    snprintf(out.s, sizeof(out.s), "%s", v);
  }
  return out;
}

/*
 * A JSON path for messages, e.g. "rules[3].operations[1]". Truncation is
 * harmless (the message gets shorter), so it goes through one vsnprintf.
 */
#define PATH_LEN 192

static void __attribute__((format(printf, 2, 3))) pathf(char out[PATH_LEN], const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out, PATH_LEN, fmt, ap);
  va_end(ap);
}

/* ---- Rules ------------------------------------------------------------------------ */

static void
free_strings(char **v, size_t n)
{
  if (v == NULL) {
    return;
  }
  for (size_t i = 0; i < n; i++) {
    free(v[i]);
  }
  free(v);
}

static void
rule_clear(struct rule *r)
{
  free(r->id);
  free(r->principal);
  free_strings(r->tenants, r->n_tenants);
  free_strings(r->required, r->n_required);
  for (size_t i = 0; i < r->n_conds; i++) {
    free(r->conds[i].key);
    free_strings(r->conds[i].values, r->conds[i].n_values);
  }
  free(r->conds);
  memset(r, 0, sizeof(*r));
}

static int
cmp_str(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The same rules as a request's context key or value (kms_wire), so a policy
 * can't name a key or value that no valid request could carry. */
static int
context_entry_ok(const char *key, const char *value)
{
  Tkms__ContextEntry e = TKMS__CONTEXT_ENTRY__INIT;
  Tkms__ContextEntry *pe = &e;
  const char *why = "";
  e.key = (char *)key;
  e.value = (char *)value;
  return kms_wire_context_ok(1, &pe, &why);
}

static int
check_fields(struct loader *l, const char *path, json_t *obj, const char *const *allowed)
{
  const char *key;
  json_t *v;
  json_object_foreach(obj, key, v)
  {
    int ok = 0;
    for (size_t i = 0; allowed[i] != NULL; i++) {
      if (strcmp(allowed[i], key) == 0) {
        ok = 1;
        break;
      }
    }
    if (!ok) {
      char p[PATH_LEN];
      if (path != NULL) {
        pathf(p, "%s.%s", path, show(key).s);
      } else {
        pathf(p, "%s", show(key).s);
      }
      return fail(l, p, "unknown field");
    }
  }
  return KMS_OK;
}

/*
 * A string array into a sorted, duplicate-free list; |check| validates each
 * element (NULL: any string). |what| names an element in messages.
 */
static int
string_list(struct loader *l, const char *path, json_t *arr, size_t max, int (*check)(const char *),
            const char *what, char ***out, size_t *n_out)
{
  int r = KMS_ERR_CONFIG;
  size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
  char **v = NULL;
  char p[PATH_LEN];
  *out = NULL;
  *n_out = 0;
  if (!json_is_array(arr) || n == 0) {
    return fail(l, path, "expected a non-empty array");
  }
  if (n > max) {
    return fail(l, path, "more than %zu entries", max);
  }
  v = calloc(n, sizeof(*v));
  if (v == NULL) {
    return fail(l, path, "out of memory");
  }
  for (size_t i = 0; i < n; i++) {
    json_t *e = json_array_get(arr, i);
    pathf(p, "%s[%zu]", path, i);
    if (!json_is_string(e)) {
      r = fail(l, p, "expected a string");
      goto out;
    }
    const char *s = json_string_value(e);
    if (check != NULL && !check(s)) {
      r = fail(l, p, "'%s' is not a valid %s", show(s).s, what);
      goto out;
    }
    if ((v[i] = strdup(s)) == NULL) {
      r = fail(l, p, "out of memory");
      goto out;
    }
    /* Name the second occurrence in the file's own order. */
    for (size_t j = 0; j < i; j++) {
      if (strcmp(v[j], s) == 0) {
        r = fail(l, p, "duplicate %s '%s'", what, show(s).s);
        goto out;
      }
    }
  }
  qsort(v, n, sizeof(*v), cmp_str);
  *out = v;
  *n_out = n;
  v = NULL;
  r = KMS_OK;
out:
  free_strings(v, n);
  return r;
}

static int
context_key_ok(const char *k)
{
  return context_entry_ok(k, "");
}

static int
context_value_ok(const char *v)
{
  return context_entry_ok("k", v);
}

static int
parse_context(struct loader *l, const char *path, json_t *ctx, struct rule *rule)
{
  static const char *const fields[] = {"required", "values", NULL};
  char p[PATH_LEN];
  int r;
  if (!json_is_object(ctx)) {
    return fail(l, path, "expected an object with 'required' and/or 'values'");
  }
  if ((r = check_fields(l, path, ctx, fields)) != KMS_OK) {
    return r;
  }
  json_t *req = json_object_get(ctx, "required");
  if (req != NULL) {
    pathf(p, "%s.required", path);
    r = string_list(l, p, req, KMS_CONTEXT_MAX_ENTRIES, context_key_ok, "context key",
                    &rule->required, &rule->n_required);
    if (r != KMS_OK) {
      return r;
    }
  }
  json_t *vals = json_object_get(ctx, "values");
  if (vals == NULL) {
    return KMS_OK;
  }
  pathf(p, "%s.values", path);
  if (!json_is_object(vals) || json_object_size(vals) == 0) {
    return fail(l, p, "expected a non-empty object of context key: [allowed values]");
  }
  if (json_object_size(vals) > KMS_CONTEXT_MAX_ENTRIES) {
    return fail(l, p, "more than %d keys", KMS_CONTEXT_MAX_ENTRIES);
  }
  rule->conds = calloc(json_object_size(vals), sizeof(*rule->conds));
  if (rule->conds == NULL) {
    return fail(l, p, "out of memory");
  }
  const char *key;
  json_t *v;
  json_object_foreach(vals, key, v)
  {
    char kp[PATH_LEN];
    pathf(kp, "%s.%s", p, show(key).s);
    if (!context_key_ok(key)) {
      return fail(l, kp, "not a valid context key (1-64 characters of [A-Za-z0-9._-])");
    }
    struct condition *c = &rule->conds[rule->n_conds];
    if ((c->key = strdup(key)) == NULL) {
      return fail(l, kp, "out of memory");
    }
    rule->n_conds++;
    r = string_list(l, kp, v, POLICY_VALUES_MAX, context_value_ok, "context value", &c->values,
                    &c->n_values);
    if (r != KMS_OK) {
      return r;
    }
  }
  return KMS_OK;
}

static int
tenant_ok(const char *t)
{
  return kms_wire_tenant_id_ok(t);
}

static int
parse_tenants(struct loader *l, const char *path, json_t *t, struct rule *rule)
{
  if (json_is_string(t)) {
    const char *s = json_string_value(t);
    if (strcmp(s, "all") == 0) {
      rule->scope = TENANTS_ALL;
      return KMS_OK;
    }
    if (strcmp(s, "bound") == 0) {
      rule->scope = TENANTS_BOUND;
      return KMS_OK;
    }
    return fail(l, path,
                "expected 'all', 'bound' or an array of tenant ids "
                "(one tenant is written ['%s'])",
                show(s).s);
  }
  if (!json_is_array(t)) {
    return fail(l, path, "expected 'all', 'bound' or an array of tenant ids");
  }
  rule->scope = TENANTS_LIST;
  return string_list(l, path, t, POLICY_TENANTS_MAX, tenant_ok, "tenant id", &rule->tenants,
                     &rule->n_tenants);
}

/*
 * A principal is what identity.c produces: "cn:NAME" or a URI SAN. A URI may
 * hold one "{tenant}" placeholder as a whole path segment; nothing else is a
 * wildcard, so every rule says exactly whom it covers.
 */
static int
parse_principal(struct loader *l, const char *path, json_t *j, struct rule *rule)
{
  if (!json_is_string(j)) {
    return fail(l, path, "expected a string");
  }
  const char *s = json_string_value(j);
  size_t n = strlen(s);
  if (n == 0) {
    return fail(l, path, "empty principal");
  }
  if (n > POLICY_PRINCIPAL_MAX) {
    return fail(l, path, "longer than %d bytes", POLICY_PRINCIPAL_MAX);
  }
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x21 || c > 0x7e) {
      return fail(l, path,
                  "'%s': spaces, control and non-ASCII characters never occur in "
                  "a certificate identity",
                  show(s).s);
    }
  }
  const char *sep = strstr(s, "://");
  int is_cn = strncmp(s, "cn:", 3) == 0;
  if (is_cn ? n == 3 : (sep == NULL || sep == s || sep[3] == '\0')) {
    return fail(l, path,
                "'%s': expected 'cn:NAME' or a URI such as "
                "'spiffe://DOMAIN/NAME'",
                show(s).s);
  }
  if (!is_cn) {
    for (const char *q = s; q < sep; q++) {
      int alpha = (*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z');
      int other = (*q >= '0' && *q <= '9') || *q == '+' || *q == '-' || *q == '.';
      if (!alpha && (q == s || !other)) {
        return fail(l, path, "'%s': invalid URI scheme", show(s).s);
      }
    }
  }
  const char *ph = strstr(s, PLACEHOLDER);
  size_t braces = 0;
  for (size_t i = 0; i < n; i++) {
    braces += s[i] == '{' || s[i] == '}';
  }
  if (braces > 0) {
    if (ph == NULL || braces != 2) {
      return fail(l, path, "'{' and '}' may only form one '{tenant}' placeholder");
    }
    if (is_cn) {
      return fail(l, path, "'{tenant}' is allowed in URI principals only");
    }
    const char *path_start = strchr(sep + 3, '/');
    const char *after = ph + PLACEHOLDER_LEN;
    if (path_start == NULL || ph <= path_start || ph[-1] != '/' ||
        (*after != '\0' && *after != '/')) {
      return fail(l, path,
                  "'{tenant}' must be a whole path segment of the URI "
                  "(e.g. 'spiffe://DOMAIN/tenant/{tenant}/NAME')");
    }
    rule->is_pattern = 1;
    rule->prefix_len = (size_t)(ph - s);
  }
  if ((rule->principal = strdup(s)) == NULL) {
    return fail(l, path, "out of memory");
  }
  if (rule->is_pattern) {
    rule->suffix = rule->principal + rule->prefix_len + PLACEHOLDER_LEN;
  }
  return KMS_OK;
}

static int
parse_operations(struct loader *l, const char *path, json_t *ops, struct rule *rule)
{
  char p[PATH_LEN];
  size_t n = json_is_array(ops) ? json_array_size(ops) : 0;
  if (n == 0) {
    return fail(l, path, "expected a non-empty array of operation names");
  }
  for (size_t i = 0; i < n; i++) {
    json_t *e = json_array_get(ops, i);
    pathf(p, "%s[%zu]", path, i);
    if (!json_is_string(e)) {
      return fail(l, p, "expected a string");
    }
    int k = op_index(json_string_value(e));
    if (k < 0) {
      return fail(l, p, "unknown operation '%s' (docs/POLICY.md lists them)",
                  show(json_string_value(e)).s);
    }
    if (rule->ops & (1u << k)) {
      return fail(l, p, "duplicate operation '%s'", vocabulary[k].name);
    }
    rule->ops |= 1u << k;
  }
  return KMS_OK;
}

static const struct rule *
find_rule_id(const policy *p, const char *id)
{
  for (size_t i = 0; i < p->n_rules; i++) {
    if (strcmp(p->rules[i].id, id) == 0) {
      return &p->rules[i];
    }
  }
  return NULL;
}

static int
parse_rule(struct loader *l, const char *path, json_t *j, struct rule *rule)
{
  static const char *const fields[] = {"id",         "description", "effect",  "principal",
                                       "operations", "tenants",     "context", NULL};
  char p[PATH_LEN];
  int r;
  if (!json_is_object(j)) {
    return fail(l, path, "expected an object");
  }
  if ((r = check_fields(l, path, j, fields)) != KMS_OK) {
    return r;
  }
  static const char *const required[] = {"id",         "effect",  "principal",
                                         "operations", "tenants", NULL};
  for (size_t i = 0; required[i] != NULL; i++) {
    if (json_object_get(j, required[i]) == NULL) {
      pathf(p, "%s.%s", path, required[i]);
      return fail(l, p, "missing");
    }
  }

  json_t *id = json_object_get(j, "id");
  pathf(p, "%s.id", path);
  if (!json_is_string(id) || !kms_wire_tenant_id_ok(json_string_value(id))) {
    return fail(l, p,
                "expected 1-64 characters of [A-Za-z0-9._-], starting with a letter "
                "or digit");
  }
  if (find_rule_id(l->p, json_string_value(id)) != NULL) {
    return fail(l, p, "duplicate rule id '%s' (ids are unique across all policy files)",
                json_string_value(id));
  }
  if ((rule->id = strdup(json_string_value(id))) == NULL) {
    return fail(l, p, "out of memory");
  }

  json_t *d = json_object_get(j, "description");
  if (d != NULL && !json_is_string(d)) {
    pathf(p, "%s.description", path);
    return fail(l, p, "expected a string");
  }

  json_t *eff = json_object_get(j, "effect");
  pathf(p, "%s.effect", path);
  if (json_is_string(eff) && strcmp(json_string_value(eff), "allow") == 0) {
    rule->allow = 1;
  } else if (!json_is_string(eff) || strcmp(json_string_value(eff), "deny") != 0) {
    return fail(l, p, "expected 'allow' or 'deny'");
  }

  pathf(p, "%s.principal", path);
  if ((r = parse_principal(l, p, json_object_get(j, "principal"), rule)) != KMS_OK) {
    return r;
  }
  pathf(p, "%s.operations", path);
  if ((r = parse_operations(l, p, json_object_get(j, "operations"), rule)) != KMS_OK) {
    return r;
  }
  pathf(p, "%s.tenants", path);
  if ((r = parse_tenants(l, p, json_object_get(j, "tenants"), rule)) != KMS_OK) {
    return r;
  }
  /* Bound tenants and a placeholder go together: a pattern principal never
   * reaches more than the tenant its own certificate names. */
  if (rule->scope == TENANTS_BOUND && !rule->is_pattern) {
    return fail(l, p, "'bound' needs a principal with a '{tenant}' placeholder");
  }
  if (rule->is_pattern && rule->scope != TENANTS_BOUND) {
    pathf(p, "%s.principal", path);
    return fail(l, p, "a principal with '{tenant}' needs \"tenants\": \"bound\"");
  }
  json_t *ctx = json_object_get(j, "context");
  if (ctx != NULL) {
    pathf(p, "%s.context", path);
    if ((r = parse_context(l, p, ctx, rule)) != KMS_OK) {
      return r;
    }
  }
  return KMS_OK;
}

static int
parse_doc(struct loader *l, json_t *root)
{
  static const char *const fields[] = {"version", "description", "rules", NULL};
  policy *p = l->p;
  char path[PATH_LEN];
  int r;
  if (!json_is_object(root)) {
    return fail(l, NULL, "expected an object with 'version' and 'rules'");
  }
  if ((r = check_fields(l, NULL, root, fields)) != KMS_OK) {
    return r;
  }
  json_t *v = json_object_get(root, "version");
  if (v == NULL) {
    return fail(l, "version", "missing");
  }
  if (!json_is_integer(v) || json_integer_value(v) != 1) {
    return fail(l, "version", "expected 1");
  }
  json_t *d = json_object_get(root, "description");
  if (d != NULL && !json_is_string(d)) {
    return fail(l, "description", "expected a string");
  }
  json_t *rules = json_object_get(root, "rules");
  if (rules == NULL) {
    return fail(l, "rules", "missing");
  }
  if (!json_is_array(rules) || json_array_size(rules) == 0) {
    return fail(l, "rules", "expected a non-empty array");
  }
  size_t n = json_array_size(rules);
  if (n > POLICY_RULES_MAX - p->n_rules) {
    return fail(l, "rules", "more than %d rules in the policy", POLICY_RULES_MAX);
  }
  if (p->n_rules + n > p->cap_rules) {
    struct rule *nr = realloc(p->rules, (p->n_rules + n) * sizeof(*nr));
    if (nr == NULL) {
      return fail(l, "rules", "out of memory");
    }
    p->rules = nr;
    p->cap_rules = p->n_rules + n;
  }
  /* Rules join the policy one by one (so later ids see earlier ones); on
   * failure the caller drops the whole policy. */
  for (size_t i = 0; i < n; i++) {
    struct rule *rule = &p->rules[p->n_rules];
    memset(rule, 0, sizeof(*rule));
    pathf(path, "rules[%zu]", i);
    r = parse_rule(l, path, json_array_get(rules, i), rule);
    if (r != KMS_OK) {
      rule_clear(rule);
      return r;
    }
    p->n_rules++;
  }
  return KMS_OK;
}

/* Parses one file's bytes into |l->p| and adds them to the digest. */
static int
add_file(struct loader *l, const char *digest_name, const uint8_t *buf, size_t len)
{
  json_error_t je;
  if (len > POLICY_FILE_MAX) {
    return fail(l, NULL, "larger than %u bytes", POLICY_FILE_MAX);
  }
  uint64_t len64 = len;
  if (EVP_DigestUpdate(l->p->md, digest_name, strlen(digest_name) + 1) != 1 ||
      EVP_DigestUpdate(l->p->md, &len64, sizeof(len64)) != 1 ||
      EVP_DigestUpdate(l->p->md, buf, len) != 1) {
    return fail(l, NULL, "digest failed");
  }
  /* Duplicate keys are refused: with them, which value wins is a guess. */
  json_t *root = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
  if (root == NULL) {
    if (l->err_len > 0) {
      snprintf(l->err, l->err_len, "%s:%d:%d: syntax error: %s", l->file, je.line, je.column,
               je.text);
      sanitize(l->err);
    }
    return KMS_ERR_CONFIG;
  }
  int r = parse_doc(l, root);
  json_decref(root);
  if (r == KMS_OK) {
    l->p->n_files++;
  }
  return r;
}

static policy *
policy_new(void)
{
  policy *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    return NULL;
  }
  p->md = EVP_MD_CTX_new();
  if (p->md == NULL || EVP_DigestInit_ex(p->md, EVP_sha256(), NULL) != 1) {
    policy_free(p);
    return NULL;
  }
  return p;
}

static int
finish(struct loader *l)
{
  uint8_t d[32];
  unsigned dl = 0;
  if (EVP_DigestFinal_ex(l->p->md, d, &dl) != 1 || dl != sizeof(d)) {
    return fail(l, NULL, "digest failed");
  }
  for (size_t i = 0; i < sizeof(d); i++) {
    snprintf(l->p->digest + 2 * i, 3, "%02x", d[i]);
  }
  EVP_MD_CTX_free(l->p->md);
  l->p->md = NULL;
  return KMS_OK;
}

int
policy_parse_buf(policy **out, const char *name, const uint8_t *buf, size_t len, char *err,
                 size_t err_len)
{
  struct loader l = {policy_new(), name, err, err_len};
  int r;
  *out = NULL;
  if (err_len > 0) {
    err[0] = '\0';
  }
  if (l.p == NULL) {
    r = fail(&l, NULL, "out of memory");
    goto out;
  }
  if ((r = add_file(&l, name, buf, len)) != KMS_OK || (r = finish(&l)) != KMS_OK) {
    goto out;
  }
  *out = l.p;
  l.p = NULL;
out:
  policy_free(l.p);
  return r;
}

/* Reads a whole regular file that others can't write, up to the size cap. */
static int
read_file(struct loader *l, const char *path, uint8_t **out, size_t *out_len)
{
  int r;
  uint8_t *buf = NULL;
  struct stat st;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  *out = NULL;
  *out_len = 0;
  if (fd < 0) {
    return fail_io(l, NULL, "cannot open: %s", strerror(errno));
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    r = fail_io(l, NULL, "not a regular file");
    goto out;
  }
  if (st.st_mode & S_IWOTH) {
    r = fail(l, NULL, "writable by others: anyone could grant themselves access (chmod o-w)");
    goto out;
  }
  if (st.st_size > (off_t)POLICY_FILE_MAX) {
    r = fail(l, NULL, "larger than %u bytes", POLICY_FILE_MAX);
    goto out;
  }
  size_t cap = (size_t)st.st_size + 1, n = 0;
  buf = malloc(cap);
  if (buf == NULL) {
    r = fail(l, NULL, "out of memory");
    goto out;
  }
  for (;;) {
    ssize_t k = read(fd, buf + n, cap - n);
    if (k < 0 && errno == EINTR) {
      continue;
    }
    if (k < 0) {
      r = fail_io(l, NULL, "read failed: %s", strerror(errno));
      goto out;
    }
    if (k == 0) {
      break;
    }
    n += (size_t)k;
    if (n == cap) {
      r = fail(l, NULL, "changed size while being read");
      goto out;
    }
  }
  *out = buf;
  *out_len = n;
  buf = NULL;
  r = KMS_OK;
out:
  free(buf);
  close(fd);
  return r;
}

static int
load_one(struct loader *l, const char *path, const char *digest_name)
{
  uint8_t *buf = NULL;
  size_t len = 0;
  const char *saved = l->file;
  l->file = path;
  int r = read_file(l, path, &buf, &len);
  if (r == KMS_OK) {
    r = add_file(l, digest_name, buf, len);
  }
  free(buf);
  l->file = saved;
  return r;
}

static int
is_policy_name(const char *name)
{
  size_t n = strlen(name);
  return name[0] != '.' && n > 5 && strcmp(name + n - 5, ".json") == 0;
}

static int
load_dir(struct loader *l, const char *path, DIR *dir)
{
  int r = KMS_OK;
  char **names = NULL;
  size_t n = 0;
  struct dirent *de;
  names = calloc(POLICY_FILES_MAX, sizeof(*names));
  if (names == NULL) {
    return fail(l, NULL, "out of memory");
  }
  while ((de = readdir(dir)) != NULL) {
    if (!is_policy_name(de->d_name)) {
      continue;
    }
    if (n == POLICY_FILES_MAX) {
      r = fail(l, NULL, "more than %d *.json files", POLICY_FILES_MAX);
      goto out;
    }
    if ((names[n] = strdup(de->d_name)) == NULL) {
      r = fail(l, NULL, "out of memory");
      goto out;
    }
    n++;
  }
  if (n == 0) {
    r = fail(l, NULL, "no *.json policy files in the directory");
    goto out;
  }
  /* A stable order, so the digest and "first rule" messages are reproducible. */
  qsort(names, n, sizeof(*names), cmp_str);
  for (size_t i = 0; i < n; i++) {
    char fp[4096];
    int k = snprintf(fp, sizeof(fp), "%s/%s", path, names[i]);
    if (k < 0 || (size_t)k >= sizeof(fp)) {
      r = fail(l, NULL, "path too long");
      goto out;
    }
    if ((r = load_one(l, fp, names[i])) != KMS_OK) {
      goto out;
    }
  }
out:
  free_strings(names, n);
  return r;
}

int
policy_load(policy **out, const char *path, char *err, size_t err_len)
{
  struct loader l = {policy_new(), path, err, err_len};
  struct stat st;
  DIR *dir = NULL;
  int r;
  *out = NULL;
  if (err_len > 0) {
    err[0] = '\0';
  }
  if (l.p == NULL) {
    r = fail(&l, NULL, "out of memory");
    goto out;
  }
  if (stat(path, &st) != 0) {
    r = fail_io(&l, NULL, "%s", strerror(errno));
    goto out;
  }
  if (S_ISDIR(st.st_mode)) {
    /* Whoever can add a file to the directory can grant access. */
    if (st.st_mode & S_IWOTH) {
      r = fail(&l, NULL, "directory writable by others (chmod o-w)");
      goto out;
    }
    if ((dir = opendir(path)) == NULL) {
      r = fail_io(&l, NULL, "cannot open directory: %s", strerror(errno));
      goto out;
    }
    r = load_dir(&l, path, dir);
  } else {
    const char *base = strrchr(path, '/');
    r = load_one(&l, path, base != NULL ? base + 1 : path);
  }
  if (r != KMS_OK || (r = finish(&l)) != KMS_OK) {
    goto out;
  }
  *out = l.p;
  l.p = NULL;
out:
  if (dir != NULL) {
    closedir(dir);
  }
  policy_free(l.p);
  return r;
}

void
policy_free(policy *p)
{
  if (p == NULL) {
    return;
  }
  for (size_t i = 0; i < p->n_rules; i++) {
    rule_clear(&p->rules[i]);
  }
  free(p->rules);
  EVP_MD_CTX_free(p->md);
  free(p);
}

size_t
policy_rule_count(const policy *p)
{
  return p != NULL ? p->n_rules : 0;
}

size_t
policy_file_count(const policy *p)
{
  return p != NULL ? p->n_files : 0;
}

const char *
policy_digest(const policy *p)
{
  return p != NULL ? p->digest : "";
}

/* ---- Evaluation ----------------------------------------------------------------------- */

/*
 * Matches the principal; for a pattern, writes the captured tenant to |cap|.
 * The capture is one path segment that is a valid tenant id: no '/', no '%'
 * (so no encoded slashes), nothing a tenant id could not be.
 */
static int
principal_matches(const struct rule *r, const char *principal, char cap[KMS_TENANT_ID_MAX + 1])
{
  cap[0] = '\0';
  if (!r->is_pattern) {
    return strcmp(r->principal, principal) == 0;
  }
  size_t n = strlen(principal), sl = strlen(r->suffix);
  if (n < r->prefix_len + sl + 1 || strncmp(principal, r->principal, r->prefix_len) != 0 ||
      strcmp(principal + n - sl, r->suffix) != 0) {
    return 0;
  }
  size_t cl = n - r->prefix_len - sl;
  if (cl > KMS_TENANT_ID_MAX) {
    return 0;
  }
  memcpy(cap, principal + r->prefix_len, cl);
  cap[cl] = '\0';
  return kms_wire_tenant_id_ok(cap);
}

static const char *
context_get(const struct policy_request *req, const char *key)
{
  for (size_t i = 0; i < req->n_context; i++) {
    if (req->context[i].key != NULL && strcmp(req->context[i].key, key) == 0) {
      return req->context[i].value != NULL ? req->context[i].value : "";
    }
  }
  return NULL;
}

static int
in_sorted(char *const *v, size_t n, const char *s)
{
  return bsearch(&s, v, n, sizeof(*v), cmp_str) != NULL;
}

/* Required keys are present and not empty; keys with listed values hold one of them. */
static int
context_matches(const struct rule *r, const struct policy_request *req)
{
  for (size_t i = 0; i < r->n_required; i++) {
    const char *v = context_get(req, r->required[i]);
    if (v == NULL || v[0] == '\0') {
      return 0;
    }
  }
  for (size_t i = 0; i < r->n_conds; i++) {
    const char *v = context_get(req, r->conds[i].key);
    if (v == NULL || !in_sorted(r->conds[i].values, r->conds[i].n_values, v)) {
      return 0;
    }
  }
  return 1;
}

/* Does the rule's tenant set contain the request's tenant (NULL: every tenant)? */
static int
tenant_covered(const struct rule *r, const char *tenant, const char *cap)
{
  switch (r->scope) {
  case TENANTS_ALL:
    return 1;
  case TENANTS_BOUND:
    return tenant != NULL && strcmp(tenant, cap) == 0;
  case TENANTS_LIST:
    return tenant != NULL && in_sorted(r->tenants, r->n_tenants, tenant);
  }
  return 0;
}

/* Does the rule's tenant set meet the request's? A deny for some tenants
 * applies to a request for every tenant. */
static int
tenant_overlaps(const struct rule *r, const char *tenant, const char *cap)
{
  return tenant == NULL || tenant_covered(r, tenant, cap);
}

void
policy_evaluate(const policy *p, const struct policy_request *req, struct policy_decision *out)
{
  const struct rule *allow = NULL;
  char cap[KMS_TENANT_ID_MAX + 1];
  out->allowed = 0;
  out->rule_id = NULL;
  int k = op_index(req->operation);
  if (p == NULL || req->principal == NULL || k < 0) {
    return;
  }
  uint32_t bit = 1u << k;
  int has_tenant = vocabulary[k].has_tenant;
  for (size_t i = 0; i < p->n_rules; i++) {
    const struct rule *r = &p->rules[i];
    if (!(r->ops & bit) || !principal_matches(r, req->principal, cap) || !context_matches(r, req)) {
      continue;
    }
    if (!r->allow) {
      if (!has_tenant || tenant_overlaps(r, req->tenant, cap)) {
        out->rule_id = r->id;
        return; /* deny wins, whatever else allows */
      }
    } else if (allow == NULL && (!has_tenant || tenant_covered(r, req->tenant, cap))) {
      allow = r;
    }
  }
  if (allow != NULL) {
    out->allowed = 1;
    out->rule_id = allow->id;
  }
}
