/* kmsctl root create: the security officer's key ceremony (docs/LIFECYCLE.md). */
#ifndef KMSCTL_ROOT_H
#define KMSCTL_ROOT_H

/* kmsctl_root_create runs `kmsctl root create ARGS...`; returns the exit status. */
int kmsctl_root_create(int argc, char **argv);

#endif
