/* kmsctl's officer commands: tenants, keys, dual-control requests (tools/kmsctl_keys.c). */
#ifndef KMSCTL_KEYS_H
#define KMSCTL_KEYS_H

#include <stdio.h>

/*
 * Exit codes of every kmsctl officer command, so scripts can tell outcomes
 * apart without parsing messages.
 */
#define KMSCTL_OK 0
#define KMSCTL_FAILED 1       /* any other failure */
#define KMSCTL_USAGE 2        /* bad arguments: nothing was sent, nothing changed */
#define KMSCTL_NOT_FOUND 3    /* no such tenant, version or request */
#define KMSCTL_PRECONDITION 4 /* wrong state, expired request, self-approval */
#define KMSCTL_DENIED 5       /* the policy does not grant it to this identity */
#define KMSCTL_UNAVAILABLE 6  /* kmsd or its HSM unreachable: try again */
#define KMSCTL_EXISTS 7       /* the tenant or an identical request exists */

/* kmsctl_keys_handles: 1 if argv[0] is a command of this module (tenant, key, ...). */
int kmsctl_keys_handles(const char *command);

/*
 * kmsctl_keys runs the command in argv[0..argc) with the client configuration
 * |config| (may be NULL: only --help works then) and returns an exit code.
 */
int kmsctl_keys(const char *config, int argc, char **argv);

/* kmsctl_keys_usage prints this module's command summary (for kmsctl --help). */
void kmsctl_keys_usage(FILE *f);

#endif
