/* A progress bar on stderr for long work (import, export).
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
    fputs ("\r\033[K", stderr);
    bar_visible = false;
  }
}

struct progress *
progress_start (const char *what, uint64_t total)
{
  struct progress *p;

  if (!isatty (STDERR_FILENO))
    return NULL;
  p = calloc (1, sizeof *p);
  if (p == NULL)
    return NULL;                /* no bar is not an error */
  p->what = what;
  p->total = total;
  p->start = now_seconds ();
  return p;
}

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
  if (ioctl (STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 &&
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
  fprintf (stderr, "\r\033[K%s [%s] %3.0f%% %s / %s  %.0f MB/s%s",
           p->what, bar, frac * 100, human_size (done, d),
           human_size (p->total, tot), rate / 1e6, eta);
  fflush (stderr);
  bar_visible = true;
  output_unlock ();
}

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

void
progress_end (struct progress *p)
{
  if (!p)
    return;
  output_lock ();
  progress_clear_locked ();
  fflush (stderr);
  output_unlock ();
  free (p);
}

int
progress_run_workers (const char *what, void *(*fn) (void *), void *arg,
                      unsigned nthreads, _Atomic unsigned *running,
                      _Atomic bool *failed, struct progress *p)
{
  pthread_t tids[TOOL_MAX_THREADS];
  unsigned i, started = 0;
  int err;

  if (nthreads > TOOL_MAX_THREADS)
    nthreads = TOOL_MAX_THREADS;
  atomic_store (running, nthreads);
  for (i = 0; i < nthreads; i++) {
    err = pthread_create (&tids[i], NULL, fn, arg);
    if (err != 0) {
      errno = err;
      tool_error ("%s: pthread_create: %m", what);
      atomic_store (failed, true);
      atomic_fetch_sub (running, nthreads - i);
      break;
    }
    started++;
  }
  while (p && atomic_load (running) > 0) {
    struct timespec ts = { .tv_sec = 0, .tv_nsec = 50 * 1000 * 1000 };
    progress_update (p);
    nanosleep (&ts, NULL);
  }
  for (i = 0; i < started; i++)
    pthread_join (tids[i], NULL);
  return atomic_load (failed) ? -1 : 0;
}
