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

extern bool verbose;
extern const char *progname;

/* Subcommands. */
int cmd_create (int argc, char **argv);
int cmd_import (int argc, char **argv);
int cmd_export (int argc, char **argv);
int cmd_list (int argc, char **argv);
int cmd_stat (int argc, char **argv);
int cmd_fsck (int argc, char **argv);

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
/* Close and report a failure to persist: 0 or -1. */
int tool_close_store (struct cas_store *st);

/* Check a volume name from the command line: 0 or -1 (reported). */
int tool_check_name (const char *name);

/* Parse a size ("10G", "4096") into *r, in [1, CAS_MAX_VOLUME_SIZE]. */
int tool_parse_size (const char *opt, const char *value, uint64_t *r);

/* "1.5 GiB" (binary units, one decimal); returns buf. */
#define HUMAN_SIZE_LEN 32
char *human_size (uint64_t bytes, char buf[HUMAN_SIZE_LEN]);

/* Write s as a JSON string literal (quoted, escaped) to fp. */
void json_string (FILE *fp, const char *s);

/* Seconds since some fixed point (CLOCK_MONOTONIC). */
double now_seconds (void);

/* Number of worker threads to use by default (online CPUs, capped). */
unsigned default_threads (void);

/* ---- progress.c: a progress bar on stderr, only if it is a terminal ---- */

struct progress;
/* what: "importing"...; total: bytes expected.  Returns NULL if stderr is
 * not a terminal (every other function accepts NULL and does nothing).
 */
struct progress *progress_start (const char *what, uint64_t total);
/* Add done bytes (thread-safe, lock-free). */
void progress_add (struct progress *p, uint64_t done);
/* Redraw if enough time passed (call from one thread, often). */
void progress_update (struct progress *p);
/* Erase the bar and free it. */
void progress_end (struct progress *p);
/* Used by the message functions: erase the current bar line (caller holds
 * the output lock) so a message does not mix with it.
 */
void progress_clear_locked (void);
/* Run fn(arg) on nthreads threads (at most TOOL_MAX_THREADS) and redraw
 * p while they run.  Each worker decrements *running when it ends; a
 * thread that cannot be started sets *failed (workers stop on it).
 * Returns -1 if *failed is set at the end ("what" names the command in
 * messages).
 */
#define TOOL_MAX_THREADS 64
int progress_run_workers (const char *what, void *(*fn) (void *), void *arg,
                          unsigned nthreads, _Atomic unsigned *running,
                          _Atomic bool *failed, struct progress *p);
void output_lock (void);
void output_unlock (void);

#endif /* NBDCAS_TOOL_H */
