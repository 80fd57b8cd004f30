/* kmsctl audit subcommands (tools/kmsctl_audit.c), called from kmsctl's dispatch. */
#ifndef KMSCTL_AUDIT_H
#define KMSCTL_AUDIT_H

/*
 * kmsctl_audit runs "kmsctl audit ARGS": argv[0] is the subcommand (verify,
 * verifier-key, verify-export: offline, no configuration, no kmsd; export:
 * asks kmsd with the client configuration |config|, NULL if none). Returns
 * the exit status (0 verified, 1 tampering found or a call failed, 2 usage
 * or I/O error).
 */
int kmsctl_audit(const char *config, int argc, char **argv);

#endif
