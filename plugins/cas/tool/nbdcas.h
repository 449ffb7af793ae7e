/* nbdcas: the admin tool for cas stores.  Shared declarations of the
 * subcommands (one file each) and the helpers in main.c / progress.c.
 *
 * Conventions: every subcommand is int cmd_X (int argc, char **argv) with
 * argv[0] the subcommand's name, and returns the process exit status.
 * Helpers return -1 after printing a message ("nbdcas: ...") on stderr.
 *
 * Thread safety: messages (tool_error, backend_error) and the progress
 * bar share one mutex, so worker threads may report at any time.
 */
#ifndef NBDCAS_TOOL_H
#define NBDCAS_TOOL_H

#include <getopt.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "store.h"

/* Exit statuses (documented in nbdcas.pod, EXIT STATUS). */
#define EXIT_OK       0   /* success; fsck: the store is clean */
#define EXIT_FAIL     1   /* the command failed; fsck: problems found */
#define EXIT_USAGE    2   /* bad command line; fsck: could not check */

extern bool tool_verbose;
extern const char *tool_name;

/* Run an nbdcas command line (argv[0] is the program's name): the global
 * options, then the command.  Returns the exit status.  Not reentrant
 * (getopt, tool_verbose): a server runs one at a time.
 */
int tool_run (int argc, char **argv);

/* Where a command runs.  In the nbdcas program, no context is set: the
 * process's stdout and stderr, its working directory, and stores opened
 * by the command itself.  A server running a command for a remote nbdcas
 * (control.c) sets one for the thread: that nbdcas's stdout, stderr and
 * working directory (received as file descriptors), and the store the
 * server already holds, which tool_open_store then returns.
 */
struct tool_ctx {
  FILE *out, *err;
  int cwdfd;                    /* for relative paths: openat() */
  struct cas_store *store;
};
void tool_set_ctx (const struct tool_ctx *ctx);    /* NULL: the process's */
const struct tool_ctx *tool_get_ctx (void);
FILE *tool_stdout (void);
FILE *tool_stderr (void);
int tool_cwdfd (void);
/* True while the command runs in a server for a remote nbdcas. */
bool tool_remote (void);
/* printf to tool_stdout(). */
int tool_printf (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

/* A message of the store (backend_error: error, backend_debug: not)
 * during a command: printed as the command's, or captured.
 */
void tool_store_message (bool error, const char *msg);

/* The nbdcas program: if a server holds the store that argv's command
 * works on, run the command there, through the store's control socket
 * (remote.c).  Called from tool_open_store; argv is the whole command
 * line, kept by main.  Returns only if the command is to run here.
 */
extern int tool_argc;
extern char **tool_argv;
extern bool tool_stale_socket;
void tool_remote_forward (const char *store);

/* Subcommands. */
int cmd_create (int argc, char **argv);
int cmd_import (int argc, char **argv);
int cmd_export (int argc, char **argv);
int cmd_list (int argc, char **argv);
int cmd_stat (int argc, char **argv);
int cmd_fsck (int argc, char **argv);
int cmd_snapshot (int argc, char **argv);
int cmd_clone (int argc, char **argv);
int cmd_delete (int argc, char **argv);
int cmd_rename (int argc, char **argv);
int cmd_diff (int argc, char **argv);
int cmd_gc (int argc, char **argv);
int cmd_upgrade (int argc, char **argv);

/* Messages on stderr, "nbdcas: " prefixed, clearing any progress bar. */
void tool_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void tool_info (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

/* Capture the store's messages (backend_error) of the calling thread
 * into buf instead of printing them (NULL: print again).  fsck uses it to
 * attach the store's reason to the problem it names.
 */
void tool_capture (char *buf, size_t len);

/* Print "Try 'nbdcas CMD --help'" after a usage error and return
 * EXIT_USAGE.
 */
int usage_error (const char *cmd);

/* getopt_long for the subcommand cmd, doing what every subcommand does
 * with -h (print help (), exit 0), -v (set tool_verbose) and an unknown option
 * or missing argument (a usage error).  Returns the next of the command's
 * own options, 0 at the end of the options (optind: the first argument),
 * or -1 when the command must return *status at once.
 */
int tool_getopt (int argc, char **argv, const char *cmd,
                 const char *shortopts, const struct option *longopts,
                 void (*help) (void), int *status);
/* The long options tool_getopt handles, for each command's table (its
 * shortopts name them too: "hv").
 */
#define TOOL_COMMON_LONG_OPTIONS                \
  { "help", no_argument, NULL, 'h' },           \
  { "verbose", no_argument, NULL, 'v' },        \
  TOOL_CEPH_LONG_OPTIONS
/* A RADOS store (STORE = rados:POOL[/NAMESPACE]): how to reach it.  Any
 * command takes them, before or after its name.
 */
#define TOOL_OPT_CEPH_CONF 0x100
#define TOOL_OPT_CEPH_USER 0x101
#define TOOL_OPT_CEPH_TIMEOUT 0x102
#define TOOL_CEPH_LONG_OPTIONS                                          \
  { "ceph-conf", required_argument, NULL, TOOL_OPT_CEPH_CONF },         \
  { "ceph-user", required_argument, NULL, TOOL_OPT_CEPH_USER },         \
  { "ceph-timeout", required_argument, NULL, TOOL_OPT_CEPH_TIMEOUT }
/* Handle one of them (c: its code): 0, or -1 after a message. */
int tool_ceph_option (int c, const char *value);
/* What the tool opens stores with (the --ceph-* options given). */
extern struct cas_ceph_options tool_ceph;
/* For cas_store_exists_opts / cas_store_create_opts. */
const struct cas_open_options *tool_store_options (void);

/* If argv[optind...] does not hold exactly n positional arguments, report
 * it (naming what is expected) and return -1.
 */
int want_args (const char *cmd, int argc, char **argv, int first, int n,
               const char *what);

/* Open an existing store for this tool: a clear message when there is no
 * store at dir (with a hint to run nbdcas create), else the store's own
 * (wrong version, lock held by a server...).  NULL on failure.
 */
struct cas_store *tool_open_store (const char *dir, bool readonly,
                                   enum cas_verify verify);
/* The same, with the index rebuilt from the packs (fsck). */
struct cas_store *tool_open_store_opts (const char *dir, bool readonly,
                                        enum cas_verify verify,
                                        bool rebuild_index);
/* Close and report a failure to persist: 0 or -1. */
int tool_close_store (struct cas_store *st);

/* Check a name from the command line: a volume name, or with snapshot_ok
 * also VOLUME@SNAP: 0 or -1 (reported).
 */
int tool_check_name (const char *name, bool snapshot_ok);

/* Parse a size ("10G", "4096") into *r, in [1, CAS_MAX_VOLUME_SIZE]. */
int tool_parse_size (const char *opt, const char *value, uint64_t *r);

/* Parse --threads: 1 to TOOL_MAX_THREADS. */
int tool_parse_threads (const char *value, unsigned *r);

/* "1.5 GiB" (binary units, one decimal); returns buf. */
#define HUMAN_SIZE_LEN 32
char *human_size (uint64_t bytes, char buf[HUMAN_SIZE_LEN]);

/* Flush stdout: -1 (reported) if some of what was printed was lost (a
 * full disk, a closed pipe), so the command cannot claim success.
 */
int tool_flush_stdout (void);

/* Write s as a JSON string literal (quoted, escaped) to fp. */
void json_string (FILE *fp, const char *s);

/* "2026-12-03T08:30:00Z": t (seconds since the epoch) in UTC. */
void iso_time (uint64_t t, char buf[32]);

/* Seconds since some fixed point (CLOCK_MONOTONIC). */
double now_seconds (void);

/* Number of worker threads to use by default (online CPUs, capped). */
unsigned default_threads (void);

/* ---- progress.c: a progress bar on stderr, only if it is a terminal ---- */

/* Used by the message functions: erase the current bar line (caller holds
 * the output lock) so a message does not mix with it.
 */
void progress_clear_locked (void);
void output_lock (void);
void output_unlock (void);

/* A bar for work done by the caller itself: NULL (and every call a
 * no-op) when stderr is not a terminal.  add is thread-safe; update
 * redraws at most ~10 times a second.
 */
struct progress;
struct progress *progress_start (const char *what, uint64_t total);
void progress_add (struct progress *p, uint64_t done);
void progress_update (struct progress *p);
void progress_end (struct progress *p);

/* Work through [0, size) in chunks of chunk bytes on several threads
 * (import, export), with a progress bar labelled "label".
 */
#define TOOL_MAX_THREADS 64
struct chunk_job {
  const char *cmd;              /* "import": names the command in messages */
  const char *label;            /* "importing": the progress bar's label */
  uint64_t size;                /* bytes to work through */
  uint64_t chunk;               /* bytes a call of fn gets (the last: less) */
  unsigned nthreads;            /* at most TOOL_MAX_THREADS */
  /* Each thread's own space for fn: scratch_size bytes, zeroed before
   * its first chunk and kept from chunk to chunk.
   */
  size_t scratch_size;
  /* Do [off, off+len): 0, or -1 after reporting (no chunks are started
   * after that).
   */
  int (*fn) (void *arg, void *scratch, uint64_t off, uint64_t len);
  void *arg;
};
/* Returns -1 if any chunk failed (or a thread could not start). */
int progress_run_chunks (const struct chunk_job *job);

#endif /* NBDCAS_TOOL_H */
