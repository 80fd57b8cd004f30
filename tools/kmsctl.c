/* kmsctl: the command line for security officers and auditors. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmsctl_audit.h"
#include "kmsctl_backup.h"
#include "kmsctl_keys.h"
#include "kmsctl_root.h"
#include "tenantkey.h"

static void
usage(FILE *f)
{
  fprintf(f,
          "usage: kmsctl [--config FILE] COMMAND\n"
          "\n"
          "commands:\n"
          "  tenant create TENANT   create a tenant and its first KEK (officer)\n"
          "  health                 ask kmsd whether it serves\n"
          "  backup [COPY]          keystore snapshot in kmsd's backup_dir (officer)\n"
          "  audit verify FILE... --key VKEY   verify audit logs offline (kmsctl audit help)\n"
          "officer commands (kmsctl tenant|key|request|receipt|approve|root --help):\n");
  kmsctl_keys_usage(f);
  fprintf(f,
          "\n"
          "FILE is a client configuration (endpoint, ca, cert, key), such as the\n"
          "DIR/clients/officer.conf that scripts/run writes. Default: $TKMS_CONFIG.\n");
}

static int
fail(tk_client *c, const char *what, int r)
{
  char msg[256] = "";
  if (c != NULL) {
    tk_client_last_message(c, msg, sizeof(msg));
  }
  fprintf(stderr, "kmsctl: %s: %s%s%s\n", what, tk_strerror(r), msg[0] != '\0' ? ": " : "",
          msg);
  return 1;
}

int
main(int argc, char **argv)
{
  static const struct option longopts[] = {
      {"config", required_argument, NULL, 'c'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *config = getenv("TKMS_CONFIG");
  int opt;
  while ((opt = getopt_long(argc, argv, "+c:h", longopts, NULL)) != -1) {
    switch (opt) {
    case 'c':
      config = optarg;
      break;
    case 'h':
      usage(stdout);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  argc -= optind;
  argv += optind;
  /* Auditors verify offline: no configuration, no kmsd (tools/kmsctl_audit.c). */
  if (argc >= 1 && strcmp(argv[0], "audit") == 0) {
    return kmsctl_audit(config, argc - 1, argv + 1);
  }
  /* The key ceremony talks to the HSM, not to kmsd (tools/kmsctl_root.c). */
  if (argc >= 2 && strcmp(argv[0], "root") == 0 && strcmp(argv[1], "create") == 0) {
    return kmsctl_root_create(argc - 2, argv + 2);
  }
  /* Officer commands: tenants, keys, dual control (tools/kmsctl_keys.c). */
  if (argc >= 1 && kmsctl_keys_handles(argv[0])) {
    return kmsctl_keys(config, argc, argv);
  }
  /* A keystore snapshot written by kmsd (tools/kmsctl_backup.c; docs/RUNBOOK.md). */
  if (argc >= 1 && strcmp(argv[0], "backup") == 0) {
    return kmsctl_backup(config, argc, argv);
  }
  if (argc < 1 || config == NULL) {
    usage(stderr);
    return 2;
  }
  int is_tenant_create = argc == 3 && strcmp(argv[0], "tenant") == 0 &&
                         strcmp(argv[1], "create") == 0;
  int is_health = argc == 1 && strcmp(argv[0], "health") == 0;
  if (!is_tenant_create && !is_health) {
    usage(stderr);
    return 2;
  }

  char err[512];
  tk_client *c = NULL;
  int r = tk_client_new_from_file(&c, config, err, sizeof(err));
  if (r != TK_OK) {
    fprintf(stderr, "kmsctl: %s\n", err);
    return 1;
  }
  int rc = 0;
  if (is_tenant_create) {
    uint32_t version = 0;
    r = tk_tenant_create(c, &version, argv[2]);
    if (r != TK_OK) {
      rc = fail(c, "tenant create", r);
    } else {
      printf("tenant %s created (KEK version %u)\n", argv[2], version);
    }
  } else {
    int serving = 0;
    r = tk_health(c, &serving);
    if (r != TK_OK) {
      rc = fail(c, "health", r);
    } else {
      printf("%s\n", serving ? "serving" : "not serving");
      rc = serving ? 0 : 1;
    }
  }
  tk_client_free(c);
  return rc;
}
