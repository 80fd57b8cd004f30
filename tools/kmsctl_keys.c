/* kmsctl for security officers: tenants, key versions, rotation, dual control, destruction
 * receipts, sessions. */
#include "kmsctl_keys.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kms_time.h"
#include "kms_wire.h"
#include "tenantkey.h"
#include "tk_internal.h"

/* ---- Arguments --------------------------------------------------------------------- */

/* What one command accepts, and what was given. */
struct args {
  const char *cmd;    /* "key rotate", for messages */
  const char *pos[4]; /* positional arguments */
  int n_pos;
  int json, help, all, no_wait;
  int has_version, has_wait, has_tenant, has_days;
  uint32_t version, wait_days, days;
  const char *tenant; /* --tenant filter */
  uint32_t state;     /* --state (sessions): 0 any */
  int64_t from_ms, to_ms; /* --from, --to (sessions): 0 unbounded */
};

enum {
  OPT_JSON = 1 << 0,
  OPT_VERSION = 1 << 1,
  OPT_WAIT = 1 << 2,
  OPT_ALL = 1 << 3,
  OPT_TENANT = 1 << 4,
  OPT_DAYS = 1 << 5,
  OPT_SESSIONS = 1 << 6, /* --state, --from, --to */
};

/* parse_time: ms since the epoch, or UTC as YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (kms_time_parse). */
static int
parse_time(const char *s, int64_t *out)
{
  return kms_time_parse(s, out) == 0;
}

static const char *const session_states[] = {"-", "open", "closed", "shredded"};

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
usage_error(const char *cmd, const char *fmt, ...)
{
  va_list ap;
  fprintf(stderr, "kmsctl %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, " (kmsctl %s --help)\n", cmd);
  return KMSCTL_USAGE;
}

/* parse_u32 accepts plain decimal only: no sign, no hex, no trailing bytes, no overflow. */
static int
parse_u32(const char *s, uint32_t max, uint32_t *out)
{
  if (s == NULL || s[0] < '0' || s[0] > '9' || strlen(s) > 10) {
    return 0;
  }
  uint64_t v = 0;
  for (const char *p = s; *p != '\0'; p++) {
    if (*p < '0' || *p > '9') {
      return 0;
    }
    v = v * 10 + (uint64_t)(*p - '0');
  }
  if (v > max) {
    return 0;
  }
  *out = (uint32_t)v;
  return 1;
}

/*
 * parse_args reads argv into |a| given the options |allowed| and the number
 * of positional arguments |n_pos|. Returns 0 or a usage exit code (message
 * printed). --help is always accepted.
 */
static int
parse_args(struct args *a, const char *cmd, int argc, char **argv, unsigned allowed, int n_pos)
{
  memset(a, 0, sizeof(*a));
  a->cmd = cmd;
  for (int i = 0; i < argc; i++) {
    const char *s = argv[i];
    if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
      a->help = 1;
    } else if ((allowed & OPT_JSON) && strcmp(s, "--json") == 0) {
      a->json = 1;
    } else if ((allowed & OPT_ALL) && strcmp(s, "--all") == 0) {
      a->all = 1;
    } else if ((allowed & OPT_WAIT) && strcmp(s, "--no-wait") == 0) {
      a->no_wait = 1;
    } else if ((allowed & OPT_VERSION) && strcmp(s, "--version") == 0) {
      if (i + 1 >= argc || !parse_u32(argv[i + 1], UINT32_MAX, &a->version) || a->version == 0) {
        return usage_error(cmd, "--version needs a version number (1, 2, ...), got '%s'",
                           i + 1 < argc ? argv[i + 1] : "");
      }
      a->has_version = 1;
      i++;
    } else if ((allowed & OPT_WAIT) && strcmp(s, "--wait-days") == 0) {
      if (i + 1 >= argc || !parse_u32(argv[i + 1], KMS_LIFECYCLE_DAYS_MAX, &a->wait_days)) {
        return usage_error(cmd, "--wait-days needs a number of days, got '%s'",
                           i + 1 < argc ? argv[i + 1] : "");
      }
      a->has_wait = 1;
      i++;
    } else if ((allowed & OPT_DAYS) && strcmp(s, "--rotation-days") == 0) {
      if (i + 1 >= argc || !parse_u32(argv[i + 1], KMS_LIFECYCLE_DAYS_MAX, &a->days)) {
        return usage_error(cmd, "--rotation-days needs a number of days (0-3650), got '%s'",
                           i + 1 < argc ? argv[i + 1] : "");
      }
      a->has_days = 1;
      i++;
    } else if ((allowed & OPT_SESSIONS) && strcmp(s, "--state") == 0) {
      a->state = 0;
      for (uint32_t k = 1; k <= 3 && i + 1 < argc; k++) {
        if (strcmp(argv[i + 1], session_states[k]) == 0) {
          a->state = k;
        }
      }
      if (a->state == 0) {
        return usage_error(cmd, "--state needs open, closed or shredded, got '%s'",
                           i + 1 < argc ? argv[i + 1] : "");
      }
      i++;
    } else if ((allowed & OPT_SESSIONS) &&
               (strcmp(s, "--from") == 0 || strcmp(s, "--to") == 0)) {
      if (i + 1 >= argc || !parse_time(argv[i + 1], s[2] == 'f' ? &a->from_ms : &a->to_ms)) {
        return usage_error(cmd, "%s needs a time (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or ms), got '%s'",
                           s, i + 1 < argc ? argv[i + 1] : "");
      }
      i++;
    } else if ((allowed & OPT_TENANT) && strcmp(s, "--tenant") == 0) {
      if (i + 1 >= argc || !kms_wire_tenant_id_ok(argv[i + 1])) {
        return usage_error(cmd, "--tenant needs a tenant id, got '%s'",
                           i + 1 < argc ? argv[i + 1] : "");
      }
      a->tenant = argv[i + 1];
      a->has_tenant = 1;
      i++;
    } else if (s[0] == '-' && s[1] != '\0') {
      return usage_error(cmd, "unknown option '%s'", s);
    } else {
      if (a->n_pos >= 4) {
        return usage_error(cmd, "unexpected argument '%s'", s);
      }
      a->pos[a->n_pos++] = s;
    }
  }
  if (a->help) {
    return 0;
  }
  if (a->n_pos != n_pos) {
    return usage_error(cmd, "%s", a->n_pos < n_pos ? "missing argument" : "too many arguments");
  }
  if (a->has_wait && a->no_wait) {
    return usage_error(cmd, "--wait-days and --no-wait exclude each other");
  }
  return 0;
}

/* tenant_arg checks a positional tenant id before anything is sent. */
static int
tenant_arg(const struct args *a, int i)
{
  if (!kms_wire_tenant_id_ok(a->pos[i])) {
    return usage_error(a->cmd,
                       "'%s' is not a tenant id (1-64 characters of [A-Za-z0-9._-], "
                       "starting with a letter or digit)",
                       a->pos[i]);
  }
  return 0;
}

/* ---- Output ----------------------------------------------------------------------- */

static int
exit_code(int r)
{
  switch (r) {
  case TK_OK:
    return KMSCTL_OK;
  case TK_ENOTFOUND:
    return KMSCTL_NOT_FOUND;
  case TK_EPRECONDITION:
    return KMSCTL_PRECONDITION;
  case TK_EPERM:
  case TK_EUNAUTHENTICATED:
    return KMSCTL_DENIED;
  case TK_EUNAVAILABLE:
  case TK_ETIMEOUT:
  case TK_EIO:
  case TK_ETLS:
  case TK_EHSM:
    return KMSCTL_UNAVAILABLE;
  case TK_EEXIST:
    return KMSCTL_EXISTS;
  case TK_EINVAL:
    return KMSCTL_USAGE;
  default:
    return KMSCTL_FAILED;
  }
}

static int
fail(tk_client *c, const char *cmd, int r)
{
  char msg[256] = "";
  if (c != NULL) {
    tk_client_last_message(c, msg, sizeof(msg));
  }
  fprintf(stderr, "kmsctl %s: %s%s%s\n", cmd, tk_strerror(r), msg[0] != '\0' ? ": " : "", msg);
  return exit_code(r);
}

/* fmt_time writes |ms| as ISO 8601 UTC ("-" for 0). */
static const char *
fmt_time(char *buf, size_t n, int64_t ms)
{
  if (ms <= 0) {
    snprintf(buf, n, "-");
    return buf;
  }
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

/* json_str prints |s| as a JSON string. */
static void
json_str(const char *s)
{
  putchar('"');
  for (const unsigned char *p = (const unsigned char *)(s != NULL ? s : ""); *p != '\0'; p++) {
    if (*p == '"' || *p == '\\') {
      printf("\\%c", *p);
    } else if (*p < 0x20 || *p == 0x7f) {
      printf("\\u%04x", *p);
    } else {
      putchar(*p);
    }
  }
  putchar('"');
}

static const char *
version_state(uint32_t s)
{
  static const char *const n[] = {
      "unknown", "active", "decrypt-only", "disabled", "pending destruction", "destroyed"};
  return s <= 5 ? n[s] : n[0];
}

static const char *
tenant_state(uint32_t s)
{
  static const char *const n[] = {"unknown", "active", "disabled", "pending destruction",
                                  "destroyed"};
  return s <= 4 ? n[s] : n[0];
}

static void
json_tenant(const Tkms__TenantInfo *t)
{
  char a[32], b[32], c[32], d[32];
  printf("{\"tenant\":");
  json_str(t->tenant_id);
  printf(",\"state\":");
  json_str(tenant_state(t->state));
  printf(",\"current_version\":%u,\"created\":\"%s\",\"state_changed\":\"%s\","
         "\"state_changed_by\":",
         t->current_version, fmt_time(a, sizeof(a), t->created_ms),
         fmt_time(b, sizeof(b), t->state_changed_ms));
  json_str(t->state_changed_by);
  printf(",\"rotation_period_days\":%u,\"rotation_period_own\":%s,\"next_rotation\":\"%s\","
         "\"destroy_after\":\"%s\"}",
         t->rotation_period_days, t->rotation_period_own ? "true" : "false",
         fmt_time(c, sizeof(c), t->next_rotation_ms), fmt_time(d, sizeof(d), t->destroy_after_ms));
}

static void
json_request(const Tkms__ApprovalRequestInfo *q)
{
  char a[32], b[32];
  printf("{\"id\":%" PRIu64 ",\"action\":", q->id);
  json_str(q->action);
  printf(",\"tenant\":");
  json_str(q->tenant_id);
  printf(",\"version\":%u,\"waiting_days\":%u,\"requested_by\":", q->version, q->waiting_days);
  json_str(q->requested_by);
  printf(",\"requested\":\"%s\",\"expires\":\"%s\",\"approvals_required\":%u,\"approved_by\":[",
         fmt_time(a, sizeof(a), q->requested_ms), fmt_time(b, sizeof(b), q->expires_ms),
         q->approvals_required);
  for (size_t i = 0; i < q->n_approved_by; i++) {
    printf(i > 0 ? "," : "");
    json_str(q->approved_by[i]);
  }
  printf("],\"state\":");
  json_str(q->state);
  printf("}");
}

static void
json_receipt(const Tkms__DestructionReceipt *r)
{
  char a[32], b[32], c[32];
  printf("{\"receipt\":%" PRIu64 ",\"tenant\":", r->id);
  json_str(r->tenant_id);
  printf(",\"version\":%u,\"versions\":[", r->version);
  for (size_t i = 0; i < r->n_versions; i++) {
    printf("%s%u", i > 0 ? "," : "", r->versions[i]);
  }
  printf("],\"request\":%" PRIu64 ",\"requested_by\":", r->request_id);
  json_str(r->requested_by);
  printf(",\"approved_by\":[");
  for (size_t i = 0; i < r->n_approved_by; i++) {
    printf(i > 0 ? "," : "");
    json_str(r->approved_by[i]);
  }
  printf("],\"requested\":\"%s\",\"approved\":\"%s\",\"destroyed\":\"%s\"}",
         fmt_time(a, sizeof(a), r->requested_ms), fmt_time(b, sizeof(b), r->approved_ms),
         fmt_time(c, sizeof(c), r->destroyed_ms));
}

static void
print_request(const Tkms__ApprovalRequestInfo *q)
{
  char a[32];
  printf("%-6" PRIu64 " %-16s %-24s %-7u %-9s %zu/%-5u %-20s %s\n", q->id, q->action, q->tenant_id,
         q->version, q->state, q->n_approved_by, q->approvals_required,
         fmt_time(a, sizeof(a), q->expires_ms), q->requested_by);
}

static void
print_receipt(const Tkms__DestructionReceipt *r)
{
  char a[32];
  printf("receipt %" PRIu64 ": tenant %s, %s", r->id, r->tenant_id,
         r->version == 0 ? "whole tenant" : "version");
  if (r->version != 0) {
    printf(" %u", r->version);
  }
  printf(", KEK versions");
  for (size_t i = 0; i < r->n_versions; i++) {
    printf("%s%u", i > 0 ? "," : " ", r->versions[i]);
  }
  printf("\n  destroyed %s, request %" PRIu64 " by %s, approved by",
         fmt_time(a, sizeof(a), r->destroyed_ms), r->request_id, r->requested_by);
  for (size_t i = 0; i < r->n_approved_by; i++) {
    printf("%s%s", i > 0 ? ", " : " ", r->approved_by[i]);
  }
  printf("\n");
}

/* ---- Calls ------------------------------------------------------------------------ */

static int
call(tk_client *c, Tkms__Request *req, Tkms__Response **resp)
{
  *resp = NULL;
  return tk_client_call(c, req, resp);
}

static int
cmd_tenant_create(tk_client *c, const struct args *a)
{
  uint32_t v = 0;
  int r = tk_tenant_create(c, &v, a->pos[0]);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  if (a->has_days && (r = tk_tenant_set_rotation_period(c, a->pos[0], a->days)) != TK_OK) {
    fail(c, "tenant create (setting the rotation period)", r);
    return exit_code(r);
  }
  if (a->json) {
    printf("{\"tenant\":");
    json_str(a->pos[0]);
    printf(",\"kek_version\":%u}\n", v);
  } else {
    printf("tenant %s created (KEK version %u)\n", a->pos[0], v);
  }
  return KMSCTL_OK;
}

static int
cmd_tenant_list(tk_client *c, const struct args *a)
{
  char after[KMS_TENANT_ID_MAX + 1] = "";
  size_t total = 0;
  int progress = isatty(STDERR_FILENO) && !a->json;
  if (a->json) {
    printf("[");
  } else {
    printf("%-32s %-20s %-8s %-8s %s\n", "TENANT", "STATE", "CURRENT", "ROTATE", "NEXT ROTATION");
  }
  for (;;) {
    Tkms__Request req;
    Tkms__ListTenantsRequest m;
    Tkms__Response *resp = NULL;
    tkms__request__init(&req);
    tkms__list_tenants_request__init(&m);
    m.after = after;
    m.limit = 500;
    req.op_case = TKMS__REQUEST__OP_LIST_TENANTS;
    req.list_tenants = &m;
    int r = call(c, &req, &resp);
    if (r != TK_OK) {
      if (a->json) {
        printf("]\n");
      }
      return fail(c, a->cmd, r);
    }
    const Tkms__ListTenantsResponse *l = resp->list_tenants;
    for (size_t i = 0; i < l->n_tenants; i++) {
      const Tkms__TenantInfo *t = l->tenants[i];
      char nr[32];
      if (a->json) {
        printf(total + i > 0 ? "," : "");
        json_tenant(t);
      } else {
        printf("%-32s %-20s %-8u %-8u %s\n", t->tenant_id, tenant_state(t->state),
               t->current_version, t->rotation_period_days,
               fmt_time(nr, sizeof(nr), t->next_rotation_ms));
      }
    }
    total += l->n_tenants;
    int more = l->next_after != NULL && l->next_after[0] != '\0';
    if (more) {
      snprintf(after, sizeof(after), "%s", l->next_after);
    }
    tk_client_response_free(resp);
    if (progress && more) {
      fprintf(stderr, "\rkmsctl: %zu tenants listed...", total);
    }
    if (!more) {
      break;
    }
  }
  if (progress && total > 500) {
    fprintf(stderr, "\r%40s\r", "");
  }
  if (a->json) {
    printf("]\n");
  }
  return KMSCTL_OK;
}

/* cmd_key_list serves "key list" and "tenant show" (with the history). */
static int
cmd_key_list(tk_client *c, const struct args *a, int show)
{
  Tkms__Request req;
  Tkms__ListKeysRequest m;
  Tkms__Response *resp = NULL;
  char t1[32], t2[32];
  tkms__request__init(&req);
  tkms__list_keys_request__init(&m);
  m.tenant_id = (char *)a->pos[0];
  req.op_case = TKMS__REQUEST__OP_LIST_KEYS;
  req.list_keys = &m;
  int r = call(c, &req, &resp);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  const Tkms__ListKeysResponse *l = resp->list_keys;
  if (a->json) {
    printf("{\"tenant\":");
    json_tenant(l->tenant);
    printf(",\"versions\":[");
    for (size_t i = 0; i < l->n_versions; i++) {
      const Tkms__KeyVersionInfo *v = l->versions[i];
      printf("%s{\"version\":%u,\"state\":", i > 0 ? "," : "", v->version);
      json_str(version_state(v->state));
      printf(",\"created\":\"%s\",\"state_changed\":\"%s\",\"state_changed_by\":",
             fmt_time(t1, sizeof(t1), v->created_ms),
             fmt_time(t2, sizeof(t2), v->state_changed_ms));
      json_str(v->state_changed_by);
      printf(",\"uses\":%" PRIu64 ",\"root_version\":%u,\"destroy_after\":\"%s\"}", v->uses,
             v->root_version, fmt_time(t1, sizeof(t1), v->destroy_after_ms));
    }
    printf("]");
    if (show) {
      printf(",\"events\":[");
      for (size_t i = 0; i < l->n_events; i++) {
        const Tkms__KeyEvent *e = l->events[i];
        printf("%s{\"at\":\"%s\",\"version\":%u,\"event\":", i > 0 ? "," : "",
               fmt_time(t1, sizeof(t1), e->at_ms), e->version);
        json_str(e->event);
        printf(",\"by\":");
        json_str(e->by);
        printf(",\"detail\":");
        json_str(e->detail);
        printf("}");
      }
      printf("]");
    }
    printf("}\n");
  } else {
    const Tkms__TenantInfo *t = l->tenant;
    if (show) {
      printf("tenant          %s\n", t->tenant_id);
      printf("state           %s (since %s, by %s)\n", tenant_state(t->state),
             fmt_time(t1, sizeof(t1), t->state_changed_ms),
             t->state_changed_by[0] != '\0' ? t->state_changed_by : "-");
      printf("created         %s\n", fmt_time(t1, sizeof(t1), t->created_ms));
      printf("current version %u\n", t->current_version);
      printf("rotation        every %u days%s, next %s\n", t->rotation_period_days,
             t->rotation_period_own ? "" : " (kmsd default)",
             fmt_time(t1, sizeof(t1), t->next_rotation_ms));
      if (t->destroy_after_ms != 0) {
        printf("destruction due %s\n", fmt_time(t1, sizeof(t1), t->destroy_after_ms));
      }
      printf("\n");
    }
    printf("%-8s %-20s %-20s %-20s %-12s %s\n", "VERSION", "STATE", "CREATED", "CHANGED", "USES",
           "CHANGED BY");
    for (size_t i = 0; i < l->n_versions; i++) {
      const Tkms__KeyVersionInfo *v = l->versions[i];
      printf("%-8u %-20s %-20s %-20s %-12" PRIu64 " %s\n", v->version, version_state(v->state),
             fmt_time(t1, sizeof(t1), v->created_ms), fmt_time(t2, sizeof(t2), v->state_changed_ms),
             v->uses, v->state_changed_by[0] != '\0' ? v->state_changed_by : "-");
    }
    if (show) {
      printf("\n%-20s %-8s %-24s %-40s %s\n", "WHEN", "VERSION", "EVENT", "BY", "DETAIL");
      for (size_t i = 0; i < l->n_events; i++) {
        const Tkms__KeyEvent *e = l->events[i];
        printf("%-20s %-8u %-24s %-40s %s\n", fmt_time(t1, sizeof(t1), e->at_ms), e->version,
               e->event, e->by, e->detail);
      }
    }
  }
  tk_client_response_free(resp);
  return KMSCTL_OK;
}

static int
cmd_tenant_set_rotation(tk_client *c, const struct args *a)
{
  uint32_t days = 0;
  if (!parse_u32(a->pos[1], KMS_LIFECYCLE_DAYS_MAX, &days)) {
    return usage_error(a->cmd, "'%s' is not a number of days (0-3650; 0: kmsd's default)",
                       a->pos[1]);
  }
  int r = tk_tenant_set_rotation_period(c, a->pos[0], days);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  if (a->json) {
    printf("{\"tenant\":");
    json_str(a->pos[0]);
    printf(",\"rotation_period_days\":%u}\n", days);
  } else {
    printf("tenant %s: rotation every %u days%s\n", a->pos[0], days,
           days == 0 ? " (kmsd's default)" : "");
  }
  return KMSCTL_OK;
}

static int
cmd_key_rotate(tk_client *c, const struct args *a)
{
  uint32_t v = 0;
  int r = tk_key_rotate(c, &v, a->pos[0]);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  if (a->json) {
    printf("{\"tenant\":");
    json_str(a->pos[0]);
    printf(",\"kek_version\":%u}\n", v);
  } else {
    printf("tenant %s: KEK version %u is active; older versions decrypt only\n", a->pos[0], v);
  }
  return KMSCTL_OK;
}

/* ---- Root key rotation (docs/LIFECYCLE.md) ------------------------------------------ */

static int
cmd_root_rotate(tk_client *c, const struct args *a)
{
  Tkms__Request req;
  Tkms__RootRotateRequest rr;
  Tkms__Response *resp = NULL;
  tkms__request__init(&req);
  tkms__root_rotate_request__init(&rr);
  req.op_case = TKMS__REQUEST__OP_ROOT_ROTATE;
  req.root_rotate = &rr;
  int r = call(c, &req, &resp);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  const Tkms__RootRotateResponse *m = resp->root_rotate;
  if (a->json) {
    printf("{\"root_version\":%u,\"previous_version\":%u,\"to_rewrap\":%" PRIu64
           ",\"legacy\":%" PRIu64 "}\n",
           m->root_version, m->previous_version, m->to_rewrap, m->legacy);
  } else {
    printf("root key v%u is current (was v%u): new KEKs wrap under it; %" PRIu64
           " key tokens are being re-wrapped in the background (kmsctl root status)\n",
           m->root_version, m->previous_version, m->to_rewrap);
    if (m->legacy > 0) {
      printf("%" PRIu64 " key tokens are under a legacy root and cannot be re-wrapped (legacy "
             "root): rotate those tenants' keys and let the old versions go\n",
             m->legacy);
    }
  }
  tk_client_response_free(resp);
  return KMSCTL_OK;
}

static int
cmd_root_status(tk_client *c, const struct args *a)
{
  Tkms__Request req;
  Tkms__RootStatusRequest rs;
  Tkms__Response *resp = NULL;
  char t1[32], t2[32];
  tkms__request__init(&req);
  tkms__root_status_request__init(&rs);
  req.op_case = TKMS__REQUEST__OP_ROOT_STATUS;
  req.root_status = &rs;
  int r = call(c, &req, &resp);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  const Tkms__RootStatusResponse *m = resp->root_status;
  if (a->json) {
    printf("{\"current_version\":%u,\"done\":%" PRIu64 ",\"total\":%" PRIu64
           ",\"legacy\":%" PRIu64 ",\"rate\":%.1f,\"eta_s\":%" PRId64 ",\"job_state\":",
           m->current_version, m->done, m->total, m->legacy, m->rate, m->eta_s);
    json_str(m->job_state);
    printf(",\"job_message\":");
    json_str(m->job_message);
    printf(",\"roots\":[");
    for (size_t i = 0; i < m->n_roots; i++) {
      const Tkms__RootVersionInfo *v = m->roots[i];
      printf("%s{\"version\":%u,\"trusted\":%s,\"state\":", i > 0 ? "," : "", v->version,
             v->trusted ? "true" : "false");
      json_str(v->state);
      printf(",\"key_tokens\":%" PRIu64 ",\"on_token\":%s,\"current_since\":\"%s\","
             "\"current_by\":",
             v->key_tokens, v->on_token ? "true" : "false",
             fmt_time(t1, sizeof(t1), v->current_since_ms));
      json_str(v->current_by);
      printf(",\"destroyed\":\"%s\"}", fmt_time(t2, sizeof(t2), v->destroyed_ms));
    }
    printf("]}\n");
  } else {
    printf("%-5s %-8s %-10s %-9s %10s  %-20s  %s\n", "ROOT", "KIND", "STATE", "ON TOKEN",
           "KEY TOKENS", "CURRENT SINCE", "DESTROYED");
    for (size_t i = 0; i < m->n_roots; i++) {
      const Tkms__RootVersionInfo *v = m->roots[i];
      printf("v%-4u %-8s %-10s %-9s %10" PRIu64 "  %-20s  %s\n", v->version,
             v->trusted ? "trusted" : "legacy", v->state, v->on_token ? "yes" : "no",
             v->key_tokens, fmt_time(t1, sizeof(t1), v->current_since_ms),
             fmt_time(t2, sizeof(t2), v->destroyed_ms));
    }
    uint64_t pending = m->total - m->done - m->legacy;
    printf("\ncurrent root v%u: %" PRIu64 " / %" PRIu64 " key tokens done", m->current_version,
           m->done, m->total);
    if (pending > 0) {
      printf(", %" PRIu64 " to go at %.1f/s, ETA ", pending, m->rate);
      if (m->eta_s >= 0) {
        printf("%" PRId64 " s\n", m->eta_s);
      } else {
        printf("unknown\n");
      }
    } else {
      printf("\n");
    }
    if (m->legacy > 0) {
      printf("%" PRIu64 " key tokens cannot be re-wrapped (legacy root): rotate the tenant's key "
             "and let the old version go\n",
             m->legacy);
    }
    printf("job: %s%s%s\n", m->job_state, m->job_message[0] != '\0' ? ": " : "",
           m->job_message);
  }
  tk_client_response_free(resp);
  return KMSCTL_OK;
}

/* change_call sends one of Disable/Enable/ScheduleDestruction/CancelDestruction and reports. */
static int
change_call(tk_client *c, const struct args *a, Tkms__Request *req,
            Tkms__KeyChangeResponse *(*pick)(const Tkms__Response *), const char *done)
{
  Tkms__Response *resp = NULL;
  int r = call(c, req, &resp);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  const Tkms__KeyChangeResponse *k = pick(resp);
  char target[128];
  if (a->has_version) {
    snprintf(target, sizeof(target), "tenant %s version %u", a->pos[0], a->version);
  } else {
    snprintf(target, sizeof(target), "tenant %s", a->pos[0]);
  }
  if (a->json) {
    printf("{\"status\":\"%s\",\"state\":", k->pending_approval ? "pending_approval" : "done");
    json_str(a->has_version ? version_state(k->state) : tenant_state(k->state));
    if (k->request != NULL) {
      printf(",\"request\":");
      json_request(k->request);
    }
    printf("}\n");
  } else if (k->pending_approval && k->request != NULL) {
    printf("request %" PRIu64 " pending approval: %s of %s", k->request->id, k->request->action,
           target);
    printf(" takes effect once %u officers agree (the requester is the first)\n",
           k->request->approvals_required);
    printf("another officer runs: kmsctl approve %" PRIu64 "\n", k->request->id);
  } else {
    printf("%s: %s, now %s\n", target, done,
           a->has_version ? version_state(k->state) : tenant_state(k->state));
  }
  tk_client_response_free(resp);
  return KMSCTL_OK;
}

static Tkms__KeyChangeResponse *
pick_disable(const Tkms__Response *r)
{
  return r->disable_key;
}

static Tkms__KeyChangeResponse *
pick_enable(const Tkms__Response *r)
{
  return r->enable_key;
}

static Tkms__KeyChangeResponse *
pick_schedule(const Tkms__Response *r)
{
  return r->schedule_destruction;
}

static Tkms__KeyChangeResponse *
pick_cancel(const Tkms__Response *r)
{
  return r->cancel_destruction;
}

static int
cmd_key_change(tk_client *c, const struct args *a, const char *which)
{
  Tkms__Request req;
  tkms__request__init(&req);
  uint32_t v = a->has_version ? a->version : 0;
  if (strcmp(which, "disable") == 0) {
    Tkms__DisableKeyRequest m;
    tkms__disable_key_request__init(&m);
    m.tenant_id = (char *)a->pos[0];
    m.version = v;
    req.op_case = TKMS__REQUEST__OP_DISABLE_KEY;
    req.disable_key = &m;
    return change_call(c, a, &req, pick_disable, "disabled");
  }
  if (strcmp(which, "enable") == 0) {
    Tkms__EnableKeyRequest m;
    tkms__enable_key_request__init(&m);
    m.tenant_id = (char *)a->pos[0];
    m.version = v;
    req.op_case = TKMS__REQUEST__OP_ENABLE_KEY;
    req.enable_key = &m;
    return change_call(c, a, &req, pick_enable, "enabled");
  }
  if (strcmp(which, "schedule-destroy") == 0) {
    Tkms__ScheduleDestructionRequest m;
    tkms__schedule_destruction_request__init(&m);
    m.tenant_id = (char *)a->pos[0];
    m.version = v;
    m.waiting_days = a->has_wait ? a->wait_days : 0;
    m.no_waiting = a->no_wait;
    req.op_case = TKMS__REQUEST__OP_SCHEDULE_DESTRUCTION;
    req.schedule_destruction = &m;
    return change_call(c, a, &req, pick_schedule, "destruction scheduled");
  }
  Tkms__CancelDestructionRequest m;
  tkms__cancel_destruction_request__init(&m);
  m.tenant_id = (char *)a->pos[0];
  m.version = v;
  req.op_case = TKMS__REQUEST__OP_CANCEL_DESTRUCTION;
  req.cancel_destruction = &m;
  return change_call(c, a, &req, pick_cancel, "destruction cancelled");
}

static int
cmd_request_list(tk_client *c, const struct args *a)
{
  Tkms__Request req;
  Tkms__ListRequestsRequest m;
  Tkms__Response *resp = NULL;
  tkms__request__init(&req);
  tkms__list_requests_request__init(&m);
  m.include_closed = a->all;
  m.tenant_id = (char *)(a->tenant != NULL ? a->tenant : "");
  req.op_case = TKMS__REQUEST__OP_LIST_REQUESTS;
  req.list_requests = &m;
  int r = call(c, &req, &resp);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  const Tkms__ListRequestsResponse *l = resp->list_requests;
  if (a->json) {
    printf("[");
    for (size_t i = 0; i < l->n_requests; i++) {
      printf(i > 0 ? "," : "");
      json_request(l->requests[i]);
    }
    printf("]\n");
  } else {
    printf("%-6s %-16s %-24s %-7s %-9s %-7s %-20s %s\n", "ID", "ACTION", "TENANT", "VERSION",
           "STATE", "APPROVED", "EXPIRES", "REQUESTED BY");
    for (size_t i = 0; i < l->n_requests; i++) {
      print_request(l->requests[i]);
    }
  }
  tk_client_response_free(resp);
  return KMSCTL_OK;
}

static int
cmd_approve(tk_client *c, const struct args *a)
{
  uint32_t id32 = 0;
  if (!parse_u32(a->pos[0], UINT32_MAX, &id32) || id32 == 0) {
    return usage_error(a->cmd, "'%s' is not a request id (kmsctl request list)", a->pos[0]);
  }
  Tkms__Request req;
  Tkms__ApproveRequest m;
  Tkms__Response *resp = NULL;
  tkms__request__init(&req);
  tkms__approve_request__init(&m);
  m.request_id = id32;
  req.op_case = TKMS__REQUEST__OP_APPROVE;
  req.approve = &m;
  int r = call(c, &req, &resp);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  const Tkms__ApproveResponse *ap = resp->approve;
  if (a->json) {
    printf("{\"executed\":%s,\"request\":", ap->executed ? "true" : "false");
    json_request(ap->request);
    printf(",\"receipts\":[");
    for (size_t i = 0; i < ap->n_receipts; i++) {
      printf(i > 0 ? "," : "");
      json_receipt(ap->receipts[i]);
    }
    printf("]}\n");
  } else {
    const Tkms__ApprovalRequestInfo *q = ap->request;
    if (ap->executed) {
      printf("request %" PRIu64 " approved: %s of tenant %s", q->id, q->action, q->tenant_id);
      if (q->version != 0) {
        printf(" version %u", q->version);
      }
      printf(" took effect\n");
    } else {
      printf("request %" PRIu64 " approved (%zu of %u); waiting for more officers\n", q->id,
             q->n_approved_by, q->approvals_required);
    }
    for (size_t i = 0; i < ap->n_receipts; i++) {
      print_receipt(ap->receipts[i]);
    }
  }
  tk_client_response_free(resp);
  return KMSCTL_OK;
}

static int
cmd_receipt_list(tk_client *c, const struct args *a)
{
  Tkms__Request req;
  Tkms__ListReceiptsRequest m;
  Tkms__Response *resp = NULL;
  tkms__request__init(&req);
  tkms__list_receipts_request__init(&m);
  m.tenant_id = (char *)(a->tenant != NULL ? a->tenant : "");
  req.op_case = TKMS__REQUEST__OP_LIST_RECEIPTS;
  req.list_receipts = &m;
  int r = call(c, &req, &resp);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  const Tkms__ListReceiptsResponse *l = resp->list_receipts;
  if (a->json) {
    printf("[");
    for (size_t i = 0; i < l->n_receipts; i++) {
      printf(i > 0 ? "," : "");
      json_receipt(l->receipts[i]);
    }
    printf("]\n");
  } else {
    for (size_t i = 0; i < l->n_receipts; i++) {
      print_receipt(l->receipts[i]);
    }
  }
  tk_client_response_free(resp);
  return KMSCTL_OK;
}

/* ---- Sessions (docs/SESSIONS.md) ------------------------------------------------------- */

static void
json_session(const Tkms__SessionInfo *x)
{
  char t[3][32];
  printf("{\"session\":");
  json_str(x->session_id);
  printf(",\"state\":\"%s\",\"kek_version\":%" PRIu32 ",\"created\":\"%s\",\"created_by\":",
         session_states[x->state <= 3 ? x->state : 0], x->kek_version,
         fmt_time(t[0], sizeof(t[0]), x->created_ms));
  json_str(x->created_by);
  printf(",\"closed\":\"%s\",\"closed_by\":", fmt_time(t[1], sizeof(t[1]), x->closed_ms));
  json_str(x->closed_by);
  printf(",\"shredded\":\"%s\",\"shredded_by\":", fmt_time(t[2], sizeof(t[2]), x->shredded_ms));
  json_str(x->shredded_by);
  printf(",\"metadata\":{");
  for (size_t i = 0; i < x->n_metadata; i++) {
    printf(i > 0 ? "," : "");
    json_str(x->metadata[i]->key);
    printf(":");
    json_str(x->metadata[i]->value);
  }
  printf("}}");
}

/* Pages through every match (500 a round trip) with --all, else prints the first page. */
static int
cmd_session_list(tk_client *c, const struct args *a)
{
  Tkms__Request req;
  Tkms__ListSessionsRequest m;
  Tkms__Response *resp = NULL;
  char token[KMS_PAGE_TOKEN_MAX + 1] = "";
  size_t shown = 0;
  int r = TK_OK;

  if (a->json) {
    printf("[");
  } else {
    printf("%-40s %-9s %4s %-20s %-20s %s\n", "SESSION", "STATE", "KEK", "CREATED", "CLOSED",
           "SHREDDED (BY)");
  }
  do {
    tkms__request__init(&req);
    tkms__list_sessions_request__init(&m);
    m.tenant_id = (char *)a->pos[0];
    m.created_from_ms = a->from_ms;
    m.created_to_ms = a->to_ms;
    m.state = a->state;
    m.page_token = token;
    req.op_case = TKMS__REQUEST__OP_LIST_SESSIONS;
    req.list_sessions = &m;
    r = call(c, &req, &resp);
    if (r != TK_OK) {
      if (a->json) {
        printf("]\n");
      }
      return fail(c, a->cmd, r);
    }
    const Tkms__ListSessionsResponse *l = resp->list_sessions;
    for (size_t i = 0; i < l->n_sessions; i++, shown++) {
      const Tkms__SessionInfo *x = l->sessions[i];
      if (a->json) {
        printf(shown > 0 ? "," : "");
        json_session(x);
      } else {
        char t[3][32];
        printf("%-40s %-9s %4" PRIu32 " %-20s %-20s %s%s%s%s\n", x->session_id,
               session_states[x->state <= 3 ? x->state : 0], x->kek_version,
               fmt_time(t[0], sizeof(t[0]), x->created_ms),
               fmt_time(t[1], sizeof(t[1]), x->closed_ms),
               fmt_time(t[2], sizeof(t[2]), x->shredded_ms), x->shredded_ms != 0 ? " (" : "",
               x->shredded_ms != 0 ? x->shredded_by : "", x->shredded_ms != 0 ? ")" : "");
      }
    }
    snprintf(token, sizeof(token), "%s", l->next_page_token != NULL ? l->next_page_token : "");
    tk_client_response_free(resp);
    resp = NULL;
  } while (a->all && token[0] != '\0');
  if (a->json) {
    printf("]\n");
  } else if (token[0] != '\0') {
    printf("(more: kmsctl session list %s --all)\n", a->pos[0]);
  }
  return KMSCTL_OK;
}

static int
cmd_session_shred(tk_client *c, const struct args *a)
{
  tk_session_receipt rc;
  char t[2][32];
  int r = tk_session_shred(c, &rc, a->pos[0], a->pos[1]);
  if (r != TK_OK) {
    return fail(c, a->cmd, r);
  }
  if (a->json) {
    printf("{\"receipt\":%" PRIu64 ",\"tenant\":", rc.id);
    json_str(a->pos[0]);
    printf(",\"session\":");
    json_str(a->pos[1]);
    printf(",\"kek_version\":%" PRIu32 ",\"created\":\"%s\",\"shredded\":\"%s\",\"by\":",
           rc.kek_version, fmt_time(t[0], sizeof(t[0]), rc.created_ms),
           fmt_time(t[1], sizeof(t[1]), rc.shredded_ms));
    json_str(rc.shredded_by);
    printf("}\n");
  } else {
    printf("receipt %" PRIu64 ": session %s of tenant %s crypto-shredded at %s by %s (its key, "
           "wrapped under KEK version %" PRIu32 ", is deleted; created %s)\n",
           rc.id, a->pos[1], a->pos[0], fmt_time(t[1], sizeof(t[1]), rc.shredded_ms),
           rc.shredded_by, rc.kek_version, fmt_time(t[0], sizeof(t[0]), rc.created_ms));
  }
  return KMSCTL_OK;
}

/* ---- Dispatch ------------------------------------------------------------------------- */

struct command {
  const char *group, *verb; /* verb NULL: the group is the command ("approve") */
  const char *synopsis, *help;
  unsigned opts;
  int n_pos;
  int needs_tenant; /* pos[0] is a tenant id */
};

static const struct command commands[] = {
    {"tenant", "create", "tenant create TENANT [--rotation-days N] [--json]",
     "Create a tenant and its first KEK version inside the HSM.", OPT_JSON | OPT_DAYS, 1, 1},
    {"tenant", "list", "tenant list [--json]", "List every tenant with its state and rotation.",
     OPT_JSON, 0, 0},
    {"tenant", "show", "tenant show TENANT [--json]",
     "A tenant's state, versions and history of changes (who, when).", OPT_JSON, 1, 1},
    {"tenant", "set-rotation", "tenant set-rotation TENANT DAYS [--json]",
     "Rotate automatically every DAYS days (0: kmsd's default).", OPT_JSON, 2, 1},
    {"key", "rotate", "key rotate TENANT [--json]",
     "New KEK version in the HSM; new data keys use it, older versions decrypt only.", OPT_JSON, 1,
     1},
    {"key", "list", "key list TENANT [--json]", "The tenant's KEK versions and their states.",
     OPT_JSON, 1, 1},
    {"key", "disable", "key disable TENANT [--version N] [--json]",
     "Suspend a version at once; without --version, request to suspend the whole tenant\n"
     "  (takes effect after another officer approves).",
     OPT_JSON | OPT_VERSION, 1, 1},
    {"key", "enable", "key enable TENANT [--version N] [--json]",
     "Bring a disabled version (or, without --version, tenant) back into service.",
     OPT_JSON | OPT_VERSION, 1, 1},
    {"key", "schedule-destroy",
     "key schedule-destroy TENANT [--version N] [--wait-days D | --no-wait] [--json]",
     "Request crypto-shredding of a version (or, without --version, the whole tenant).\n"
     "  After another officer approves, the key waits D days (7-30, default kmsd's\n"
     "  destruction_wait_days), then its key tokens are deleted for ever. --no-wait only\n"
     "  where kmsd sets allow_short_waiting_periods (tests).",
     OPT_JSON | OPT_VERSION | OPT_WAIT, 1, 1},
    {"key", "cancel-destroy", "key cancel-destroy TENANT [--version N] [--json]",
     "Cancel a destruction request, or restore a key during its waiting period.",
     OPT_JSON | OPT_VERSION, 1, 1},
    {"request", "list", "request list [--all] [--tenant TENANT] [--json]",
     "Dual-control requests: pending ones, or with --all also executed, expired, cancelled.",
     OPT_JSON | OPT_ALL | OPT_TENANT, 0, 0},
    {"receipt", "list", "receipt list [--tenant TENANT] [--json]",
     "Destruction receipts: what was shredded, when, requested and approved by whom.",
     OPT_JSON | OPT_TENANT, 0, 0},
    {"session", "list",
     "session list TENANT [--state open|closed|shredded] [--from T] [--to T] [--all] [--json]",
     "Sessions of a tenant created in [T, T), oldest first: state, KEK version, who\n"
     "  closed or shredded them. The first 500; --all pages through every one.\n"
     "  T: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ (UTC) or milliseconds since the epoch.",
     OPT_JSON | OPT_ALL | OPT_SESSIONS, 1, 1},
    {"session", "shred", "session shred TENANT SESSION [--json]",
     "Crypto-shred one session (GDPR erasure): its key is deleted from the keystore and its\n"
     "  WAL at once, and every recording sealed under it becomes unreadable for ever.\n"
     "  Prints the destruction receipt.",
     OPT_JSON, 2, 1},
    {"approve", NULL, "approve ID [--json]",
     "Approve another officer's request; the last approval makes it take effect.", OPT_JSON, 1, 0},
    {"root", "create", "root create [--config KMSD_CONF] --so-pin-file FILE",
     "Key ceremony, security officer, on kmsd's machine (no kmsd needed): generates the next\n"
     "  root key version inside the HSM, CKA_TRUSTED, with the SO PIN. --config is kmsd's\n"
     "  configuration (module and token), default $KMSD_CONFIG. Then: root rotate.",
     0, 0, 0},
    {"root", "rotate", "root rotate [--json]",
     "Make the newest root key on the HSM token current; kmsd re-wraps every key token under\n"
     "  it in the background (see root status) and destroys the old root once nothing needs it.",
     OPT_JSON, 0, 0},
    {"root", "status", "root status [--json]",
     "Root key versions with their key token counts; re-wrap progress done/total, rate, ETA,\n"
     "  legacy tokens that cannot be re-wrapped, and the job's state.",
     OPT_JSON, 0, 0},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

int
kmsctl_keys_handles(const char *command)
{
  for (size_t i = 0; i < N_COMMANDS; i++) {
    if (strcmp(commands[i].group, command) == 0) {
      return 1;
    }
  }
  return 0;
}

void
kmsctl_keys_usage(FILE *f)
{
  for (size_t i = 0; i < N_COMMANDS; i++) {
    fprintf(f, "  %s\n", commands[i].synopsis);
  }
}

static void
group_usage(FILE *f, const char *group)
{
  fprintf(f, "usage:\n");
  for (size_t i = 0; i < N_COMMANDS; i++) {
    if (strcmp(commands[i].group, group) == 0) {
      fprintf(f, "  kmsctl [--config FILE] %s\n      %s\n", commands[i].synopsis, commands[i].help);
    }
  }
  fprintf(f, "\nexit codes: 0 ok, 1 failed, 2 bad arguments (nothing sent), 3 not found,\n"
             "4 wrong state / expired / self-approval, 5 permission denied, 6 kmsd unavailable,\n"
             "7 already exists\n");
}

int
kmsctl_keys(const char *config, int argc, char **argv)
{
  const char *group = argv[0];
  const struct command *cmd = NULL;
  int skip = 1;
  char name[64];

  if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    group_usage(stdout, group);
    return KMSCTL_OK;
  }
  for (size_t i = 0; i < N_COMMANDS; i++) {
    if (strcmp(commands[i].group, group) != 0) {
      continue;
    }
    if (commands[i].verb == NULL) {
      cmd = &commands[i];
      break;
    }
    if (argc >= 2 && strcmp(commands[i].verb, argv[1]) == 0) {
      cmd = &commands[i];
      skip = 2;
      break;
    }
  }
  if (cmd == NULL) {
    fprintf(stderr, "kmsctl %s: %s '%s'\n", group,
            argc >= 2 ? "unknown subcommand" : "missing subcommand", argc >= 2 ? argv[1] : "");
    group_usage(stderr, group);
    return KMSCTL_USAGE;
  }
  snprintf(name, sizeof(name), "%s%s%s", cmd->group, cmd->verb != NULL ? " " : "",
           cmd->verb != NULL ? cmd->verb : "");
  struct args a;
  int r = parse_args(&a, name, argc - skip, argv + skip, cmd->opts, cmd->n_pos);
  if (r != 0) {
    return r;
  }
  if (a.help) {
    printf("usage: kmsctl [--config FILE] %s\n  %s\n", cmd->synopsis, cmd->help);
    return KMSCTL_OK;
  }
  if (cmd->needs_tenant && (r = tenant_arg(&a, 0)) != 0) {
    return r;
  }
  if (strcmp(name, "approve") == 0) {
    uint32_t id = 0;
    if (!parse_u32(a.pos[0], UINT32_MAX, &id) || id == 0) {
      return usage_error(name, "'%s' is not a request id (see kmsctl request list)", a.pos[0]);
    }
  }
  if (strcmp(name, "session shred") == 0 && !kms_wire_session_id_ok(a.pos[1])) {
    return usage_error(name,
                       "'%s' is not a session id (1-128 characters of [A-Za-z0-9._-], "
                       "starting with a letter or digit)",
                       a.pos[1]);
  }
  if (strcmp(name, "tenant set-rotation") == 0) {
    uint32_t d = 0;
    if (!parse_u32(a.pos[1], KMS_LIFECYCLE_DAYS_MAX, &d)) {
      return usage_error(name, "'%s' is not a number of days (0-3650)", a.pos[1]);
    }
  }
  if (config == NULL) {
    fprintf(stderr, "kmsctl %s: no client configuration: give --config FILE or set TKMS_CONFIG\n",
            name);
    return KMSCTL_USAGE;
  }

  char err[512];
  tk_client *c = NULL;
  r = tk_client_new_from_file(&c, config, err, sizeof(err));
  if (r != TK_OK) {
    fprintf(stderr, "kmsctl %s: %s\n", name, err);
    return r == TK_ECONFIG ? KMSCTL_USAGE : KMSCTL_FAILED;
  }
  if (strcmp(name, "tenant create") == 0) {
    r = cmd_tenant_create(c, &a);
  } else if (strcmp(name, "tenant list") == 0) {
    r = cmd_tenant_list(c, &a);
  } else if (strcmp(name, "tenant show") == 0) {
    r = cmd_key_list(c, &a, 1);
  } else if (strcmp(name, "tenant set-rotation") == 0) {
    r = cmd_tenant_set_rotation(c, &a);
  } else if (strcmp(name, "key rotate") == 0) {
    r = cmd_key_rotate(c, &a);
  } else if (strcmp(name, "key list") == 0) {
    r = cmd_key_list(c, &a, 0);
  } else if (strcmp(group, "key") == 0) {
    r = cmd_key_change(c, &a, cmd->verb);
  } else if (strcmp(name, "request list") == 0) {
    r = cmd_request_list(c, &a);
  } else if (strcmp(name, "receipt list") == 0) {
    r = cmd_receipt_list(c, &a);
  } else if (strcmp(name, "session list") == 0) {
    r = cmd_session_list(c, &a);
  } else if (strcmp(name, "session shred") == 0) {
    r = cmd_session_shred(c, &a);
  } else if (strcmp(name, "root rotate") == 0) {
    r = cmd_root_rotate(c, &a);
  } else if (strcmp(name, "root status") == 0) {
    r = cmd_root_status(c, &a);
  } else {
    r = cmd_approve(c, &a);
  }
  tk_client_free(c);
  return r;
}
