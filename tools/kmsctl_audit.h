/* kmsctl audit subcommands (tools/kmsctl_audit.c), called from kmsctl's dispatch. */
#ifndef KMSCTL_AUDIT_H
#define KMSCTL_AUDIT_H

/*
 * kmsctl_audit runs "kmsctl audit ARGS": argv[0] is the subcommand (verify,
 * verifier-key). Works offline: no configuration, no kmsd. Returns the exit
 * status (0 verified, 1 tampering found, 2 usage or I/O error).
 */
int kmsctl_audit(int argc, char **argv);

#endif
