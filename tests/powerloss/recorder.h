/* The power-loss recorder's log format (recorder.c writes it,
 * powerloss.py reads it: keep the two in step).  Host byte order.
 */
#ifndef PLR_RECORDER_H
#define PLR_RECORDER_H

#include <stdint.h>

#define PLR_MAGIC 0x31524c50    /* "PLR1" */

enum plr_type {
  PLR_OPEN = 1,         /* fd; a flags, b mode, c inode; path as asked,
                           path2 what /proc/self/fd says */
  PLR_CLOSE = 2,        /* fd; path */
  PLR_WRITE = 3,        /* fd; a offset, b PLR_WRITE_*; path; data */
  PLR_TRUNCATE = 4,     /* fd (-1: by path); a length; path */
  PLR_FALLOCATE = 5,    /* fd; a mode, b offset, c length; path */
  PLR_RENAME = 6,       /* a flags (renameat2); path old, path2 new */
  PLR_UNLINK = 7,       /* a 1 if a directory; path */
  PLR_MKDIR = 8,        /* a mode; path */
  PLR_LINK = 9,         /* path old, path2 new */
  PLR_SYNC_BEGIN = 10,  /* fd (-1: sync); a PLR_SYNC_*; path */
  PLR_SYNC_END = 11,    /* fd; err; a PLR_SYNC_*, b seq of the begin */
  PLR_DUP = 12,         /* fd the new fd; a the old fd; path */
  PLR_MKNOD = 13,       /* a mode (S_IFSOCK: a Unix socket bound); path */
};

enum plr_sync {
  PLR_SYNC_FSYNC = 1,
  PLR_SYNC_FDATASYNC = 2,
  PLR_SYNC_ALL = 3,     /* syncfs, sync: the whole file system */
};

/* PLR_WRITE b: the write was durable when it returned (RWF_DSYNC,
 * RWF_SYNC, an O_DSYNC/O_SYNC fd).
 */
#define PLR_WRITE_DSYNC 1

struct plr_entry {
  uint32_t magic;
  uint16_t type;
  uint16_t reserved0;
  uint32_t pid, tid;
  int32_t fd;
  int32_t err;          /* 0, or the errno of the call (SYNC_END, CLOSE) */
  uint64_t seq;         /* per process, from 1 */
  uint64_t a, b, c;
  uint32_t path_len, path2_len, data_len, reserved1;
};
_Static_assert (sizeof (struct plr_entry) == 72, "plr_entry is 72 bytes");

#endif /* PLR_RECORDER_H */
