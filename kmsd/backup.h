/* Keystore snapshots for the Backup RPC: a named file in backup_dir, its size and SHA-256. */
#ifndef KMSD_BACKUP_H
#define KMSD_BACKUP_H

#include <stddef.h>
#include <stdint.h>

#include "keystore.h"

#define BACKUP_SHA256_HEX_LEN 64

/*
 * backup_snapshot writes a consistent snapshot of |ks| (keystore_backup) to
 * |dir|/keystore-YYYYMMDDTHHMMSSmmmZ.db, then reads it back for its size and
 * SHA-256 (lowercase hex into |sha256_hex|, BACKUP_SHA256_HEX_LEN + 1 bytes).
 * The full path goes to |path|. KMS_ERR_FAILED_PRECONDITION if |dir| is empty
 * (backup_dir not configured); on failure |why| says why (no secrets).
 */
int backup_snapshot(keystore *ks, const char *dir, char *path, size_t path_len,
                    uint64_t *out_size, char *sha256_hex, char *why, size_t why_len);

#endif
