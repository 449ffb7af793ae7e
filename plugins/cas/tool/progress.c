/* A progress bar on stderr for long work (import, export), and the
 * threads that do that work chunk by chunk.
 *
 * Shown only when stderr is a terminal: logs and test output never see
 * carriage returns.  Workers add bytes with an atomic counter (no lock on
 * the data path); one thread redraws at most ~10 times a second.  The
 * output mutex keeps messages from other threads off the bar's line.
 */
#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "cleanup.h"
#include "nbdcas.h"

struct progress {
  const char *what;
  uint64_t total;
  _Atomic uint64_t done;
  double start, last_draw;
};

static pthread_mutex_t output_mutex = PTHREAD_MUTEX_INITIALIZER;
static bool bar_visible;        /* under output_mutex */

void output_lock (void) { pthread_mutex_lock (&output_mutex); }
void output_unlock (void) { pthread_mutex_unlock (&output_mutex); }

void
progress_clear_locked (void)
{
  if (bar_visible) {
    fputs ("\r\033[K", tool_stderr ());
    bar_visible = false;
  }
}

/* what: "importing"...; total: bytes expected.  Returns NULL if stderr is
 * not a terminal (every other function accepts NULL and does nothing).
 */
struct progress *
progress_start (const char *what, uint64_t total)
{
  struct progress *p;

  if (!isatty (fileno (tool_stderr ())))
    return NULL;
  p = calloc (1, sizeof *p);
  if (p == NULL)
    return NULL;                /* no bar is not an error */
  p->what = what;
  p->total = total;
  p->start = now_seconds ();
  return p;
}

/* Add done bytes (thread-safe, lock-free). */
void
progress_add (struct progress *p, uint64_t done)
{
  if (p)
    atomic_fetch_add_explicit (&p->done, done, memory_order_relaxed);
}

static void
draw (struct progress *p, double t)
{
  char d[HUMAN_SIZE_LEN], tot[HUMAN_SIZE_LEN], bar[64], eta[32] = "";
  uint64_t done = atomic_load_explicit (&p->done, memory_order_relaxed);
  double frac = p->total ? (double) done / p->total : 1;
  double elapsed = t - p->start;
  double rate = elapsed > 0 ? done / elapsed : 0;
  struct winsize ws;
  int width = 30, i, fill;

  /* Narrow terminals get a shorter bar rather than a wrapped line. */
  if (ioctl (fileno (tool_stderr ()), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 &&
      ws.ws_col < 90)
    width = ws.ws_col > 70 ? (int) ws.ws_col - 60 : 10;
  if (frac > 1)
    frac = 1;
  fill = frac * width;
  for (i = 0; i < width; i++)
    bar[i] = i < fill ? '#' : '-';
  bar[width] = '\0';
  if (rate > 0 && done < p->total) {
    unsigned s = (p->total - done) / rate;
    snprintf (eta, sizeof eta, " ETA %u:%02u", s / 60, s % 60);
  }
  output_lock ();
  fprintf (tool_stderr (), "\r\033[K%s [%s] %3.0f%% %s / %s  %.0f MB/s%s",
           p->what, bar, frac * 100, human_size (done, d),
           human_size (p->total, tot), rate / 1e6, eta);
  fflush (tool_stderr ());
  bar_visible = true;
  output_unlock ();
}

/* Redraw if enough time passed (call from one thread, often). */
void
progress_update (struct progress *p)
{
  double t;

  if (!p)
    return;
  t = now_seconds ();
  if (t - p->last_draw < 0.1)
    return;
  p->last_draw = t;
  draw (p, t);
}

/* Erase the bar and free it. */
void
progress_end (struct progress *p)
{
  if (!p)
    return;
  output_lock ();
  progress_clear_locked ();
  fflush (tool_stderr ());
  output_unlock ();
  free (p);
}

/* A job while it runs: the chunks are shared out by a counter. */
struct run {
  const struct chunk_job *job;
  uint64_t nchunks;
  struct progress *progress;
  _Atomic uint64_t next;        /* next chunk to take */
  _Atomic bool failed;          /* a chunk failed: everyone stops */
  _Atomic unsigned running;     /* threads not finished yet */
  const struct tool_ctx *ctx;   /* the caller's: where messages go */
};

static void *
run_thread (void *opaque)
{
  struct run *r = opaque;
  const struct chunk_job *job = r->job;
  CLEANUP_FREE void *scratch = NULL;

  tool_set_ctx (r->ctx);        /* output and messages as the caller's */
  scratch = calloc (1, job->scratch_size);
  if (scratch == NULL) {
    tool_error ("%s: out of memory", job->cmd);
    atomic_store (&r->failed, true);
  }
  while (scratch && !atomic_load (&r->failed)) {
    uint64_t k = atomic_fetch_add (&r->next, 1);
    uint64_t off = k * job->chunk, len;

    if (k >= r->nchunks)
      break;
    len = job->size - off < job->chunk ? job->size - off : job->chunk;
    if (job->fn (job->arg, scratch, off, len) == -1) {
      atomic_store (&r->failed, true);
      break;
    }
    progress_add (r->progress, len);
  }
  tool_set_ctx (NULL);
  atomic_fetch_sub (&r->running, 1);
  return NULL;
}

int
progress_run_chunks (const struct chunk_job *job)
{
  pthread_t tids[TOOL_MAX_THREADS];
  unsigned i, nthreads = job->nthreads, started = 0;
  struct run r = {
    .job = job,
    .nchunks = (job->size + job->chunk - 1) / job->chunk,
    .ctx = tool_get_ctx (),
  };
  int err;

  /* A thread with no chunk to take would only allocate its scratch. */
  if (nthreads > r.nchunks)
    nthreads = r.nchunks;
  if (nthreads > TOOL_MAX_THREADS)
    nthreads = TOOL_MAX_THREADS;
  r.progress = progress_start (job->label, job->size);
  atomic_store (&r.running, nthreads);
  for (i = 0; i < nthreads; i++) {
    err = pthread_create (&tids[i], NULL, run_thread, &r);
    if (err != 0) {
      errno = err;
      tool_error ("%s: pthread_create: %m", job->cmd);
      atomic_store (&r.failed, true);
      atomic_fetch_sub (&r.running, nthreads - i);
      break;
    }
    started++;
  }
  while (r.progress && atomic_load (&r.running) > 0) {
    struct timespec ts = { .tv_sec = 0, .tv_nsec = 50 * 1000 * 1000 };
    progress_update (r.progress);
    nanosleep (&ts, NULL);
  }
  for (i = 0; i < started; i++)
    pthread_join (tids[i], NULL);
  progress_end (r.progress);
  return atomic_load (&r.failed) ? -1 : 0;
}
