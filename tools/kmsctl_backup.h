/* kmsctl backup: ask kmsd for a keystore snapshot, optionally copy it and check its SHA-256. */
#ifndef KMSCTL_BACKUP_H
#define KMSCTL_BACKUP_H

/*
 * kmsctl_backup runs `kmsctl backup [FILE]` (argv[0] is "backup") with the
 * client configuration |config|. Returns the process exit status.
 */
int kmsctl_backup(const char *config, int argc, char **argv);

#endif
