/* kmsctl root create: the key ceremony, run by a security officer on kmsd's machine, without kmsd. */
#include "kmsctl_root.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "hsm.h"
#include "kms_err.h"
#include "kmsctl_keys.h"

static const char usage_text[] =
    "usage: kmsctl root create [--config KMSD_CONF] --so-pin-file FILE [--json]\n"
    "  The key ceremony: logs in to kmsd's HSM token as security officer (SO PIN from FILE,\n"
    "  first line, mode 0600) and generates the next root key version inside the HSM:\n"
    "  AES-256, CKA_TRUSTED, sensitive, never extractable, wrap/unwrap only. kmsd never holds\n"
    "  the SO PIN. KMSD_CONF (default $KMSD_CONFIG) names the PKCS#11 module, the token and\n"
    "  kmsd's user PIN file, read only to see kmsd's own (legacy) root. kmsd may be running.\n"
    "  Then: kmsctl root rotate.\n";

static int
bad(const char *what, const char *arg)
{
  fprintf(stderr, "kmsctl root create: %s%s%s%s (kmsctl root create --help)\n", what,
          arg != NULL ? " '" : "", arg != NULL ? arg : "", arg != NULL ? "'" : "");
  return KMSCTL_USAGE;
}

int
kmsctl_root_create(int argc, char **argv)
{
  const char *conf = getenv("KMSD_CONFIG");
  const char *so_pin = NULL;
  int json = 0;
  struct kmsd_config *cfg = NULL;
  char err[512] = "";
  uint32_t version = 0;
  int rc = KMSCTL_FAILED;

  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(usage_text, stdout);
      return KMSCTL_OK;
    }
    if (strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "--so-pin-file") == 0) {
      if (i + 1 >= argc || argv[i + 1][0] == '\0' || argv[i + 1][0] == '-') {
        return bad("this option needs a file:", argv[i]);
      }
      *(argv[i][2] == 'c' ? &conf : &so_pin) = argv[i + 1];
      i++;
    } else if (argv[i][0] == '-') {
      return bad("unknown option", argv[i]);
    } else {
      return bad("unexpected argument", argv[i]);
    }
  }
  if (so_pin == NULL) {
    return bad("--so-pin-file FILE is required (the security officer's PIN)", NULL);
  }
  if (conf == NULL || conf[0] == '\0') {
    return bad("no kmsd configuration: give --config KMSD_CONF or set KMSD_CONFIG", NULL);
  }
  if ((cfg = calloc(1, sizeof(*cfg))) == NULL) {
    return KMSCTL_FAILED;
  }
  if (config_load(cfg, conf, err, sizeof(err)) != KMS_OK) {
    fprintf(stderr, "kmsctl root create: %s\n", err);
    rc = KMSCTL_USAGE;
    goto out;
  }
  int r = hsm_root_ceremony(cfg->pkcs11_module, cfg->token_label, cfg->pin_file, so_pin,
                            &version, err, sizeof(err));
  if (r != KMS_OK) {
    fprintf(stderr, "kmsctl root create: %s\n", err[0] != '\0' ? err : kms_strerror(r));
    rc = r == KMS_ERR_CONFIG || r == KMS_ERR_INVALID_ARGUMENT ? KMSCTL_USAGE
         : r == KMS_ERR_FAILED_PRECONDITION                   ? KMSCTL_PRECONDITION
         : r == KMS_ERR_HSM                                   ? KMSCTL_UNAVAILABLE
                                                              : KMSCTL_FAILED;
    goto out;
  }
  if (json) {
    printf("{\"root_version\":%u,\"trusted\":true}\n", version);
  } else {
    printf("root key v%u generated in the HSM token \"%s\" (CKA_TRUSTED, never extractable); "
           "next: kmsctl root rotate\n",
           version, cfg->token_label);
  }
  rc = KMSCTL_OK;
out:
  free(cfg);
  return rc;
}
