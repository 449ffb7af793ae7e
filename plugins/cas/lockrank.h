/* Ranked locks: the lock order of volumeint.h, checked at run time in
 * checking builds (configure --enable-lock-checks, --enable-sanitizers or
 * --enable-tsan define NBDCAS_LOCK_CHECKS), plain pthread calls otherwise.
 *
 * Each lock belongs to a class, and each class has a rank; a thread may
 * only take a lock whose rank is above the rank of every lock it holds.
 * Classes of one rank are never held together (map_lock and a leaf
 * stripe; a leaf's mutex and levels_lock; the innermost locks).  A
 * violation aborts, naming both locks and where each was taken: it is a
 * deadlock waiting for the wrong interleaving, even if this run got away
 * with it.  A trylock cannot deadlock: it is not checked, only recorded
 * when it succeeds.  ranked_cond_wait drops the mutex's record while it
 * waits and takes it again (checked) when it wakes.  Unlocking a lock the
 * thread does not hold aborts too.
 *
 * What a thread holds is thread-local (one record per lock, up to
 * LOCKRANK_DEPTH); LOCKRANK_DEFINE in one file defines it.
 * Thread-safety: as the pthread calls they wrap.
 */
#ifndef NBDCAS_LOCKRANK_H
#define NBDCAS_LOCKRANK_H

#include <pthread.h>

#include "cleanup.h"

/* The lock classes, outermost first (volumeint.h: "Lock order"). */
enum lock_class {
  LOCK_CACHE_EVICT,             /* wcache.evict_lock */
  LOCK_CACHE_STRIPE,            /* wcache.stripe[] */
  LOCK_CACHE_ENTRY,             /* dblock.lock */
  LOCK_GC_GATE,                 /* cas_store.gc_gate, shared */
  LOCK_FLUSH,                   /* cas_volume.flush_lock */
  LOCK_MAP_EVICT,               /* cas_volume.evict_lock */
  LOCK_MAP,                     /* cas_volume.map_lock */
  LOCK_LEAF_STRIPE,             /* cas_volume.stripe[] */
  LOCK_LEAF,                    /* leaf.lock */
  LOCK_LEVELS,                  /* cas_volume.levels_lock */
  LOCK_ROOM,                    /* wcache.room_lock */
  LOCK_POOL,                    /* wcache.pool_lock */
  LOCK_BG,                      /* cas_volume.bg_lock */
  LOCK_UNIT_WRITER,             /* cas_unit_writer.lock (unitwriter.h) */
};

#ifdef NBDCAS_LOCK_CHECKS

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

struct lockrank_class_info {
  const char *name;
  unsigned rank;
};

static const struct lockrank_class_info lockrank_classes[] = {
  [LOCK_CACHE_EVICT]  = { "the write-back cache's evict_lock", 1 },
  [LOCK_CACHE_STRIPE] = { "a write-back cache stripe", 2 },
  [LOCK_CACHE_ENTRY]  = { "a cache entry's lock", 3 },
  [LOCK_GC_GATE]      = { "the store's gc_gate", 4 },
  [LOCK_FLUSH]        = { "flush_lock", 5 },
  [LOCK_MAP_EVICT]    = { "the map's evict_lock", 6 },
  [LOCK_MAP]          = { "map_lock", 7 },
  [LOCK_LEAF_STRIPE]  = { "a leaf stripe", 7 },
  [LOCK_LEAF]         = { "a leaf's mutex", 8 },
  [LOCK_LEVELS]       = { "levels_lock", 8 },
  [LOCK_ROOM]         = { "the write-back cache's room_lock", 9 },
  [LOCK_POOL]         = { "the write-back cache's pool_lock", 9 },
  [LOCK_BG]           = { "bg_lock", 9 },
  [LOCK_UNIT_WRITER]  = { "the unit writer's lock", 9 },
};

#define LOCKRANK_DEPTH 16

struct lockrank_held {
  unsigned n;
  struct {
    const void *lock;
    enum lock_class cls;
    const char *file;
    int line;
  } h[LOCKRANK_DEPTH];
};

extern _Thread_local struct lockrank_held lockrank_held;

__attribute__ ((noreturn, cold, format (printf, 1, 2)))
void lockrank_fail (const char *fmt, ...);
/* In one file: "LOCKRANK_DEFINE;". */
#define LOCKRANK_DEFINE                                                 \
  void                                                                  \
  lockrank_fail (const char *fmt, ...)                                  \
  {                                                                     \
    va_list ap;                                                         \
    va_start (ap, fmt);                                                 \
    fputs ("nbdcas: lock order violated: ", stderr);                    \
    vfprintf (stderr, fmt, ap);                                         \
    fputs (" (see the lock order in plugins/cas/volumeint.h)\n", stderr); \
    va_end (ap);                                                        \
    abort ();                                                           \
  }                                                                     \
  _Thread_local struct lockrank_held lockrank_held

/* Before taking lock (class cls) blocking: check the order. */
static inline void
lockrank_check (enum lock_class cls, const char *file, int line)
{
  struct lockrank_held *t = &lockrank_held;
  unsigned i, rank = lockrank_classes[cls].rank;

  for (i = 0; i < t->n; i++)
    if (lockrank_classes[t->h[i].cls].rank >= rank)
      lockrank_fail ("taking %s at %s:%d while holding %s taken at %s:%d",
                     lockrank_classes[cls].name, file, line,
                     lockrank_classes[t->h[i].cls].name,
                     t->h[i].file, t->h[i].line);
}

static inline void
lockrank_record (const void *lock, enum lock_class cls, const char *file,
                 int line)
{
  struct lockrank_held *t = &lockrank_held;

  if (t->n == LOCKRANK_DEPTH)
    lockrank_fail ("taking %s at %s:%d while holding %d locks already",
                   lockrank_classes[cls].name, file, line, LOCKRANK_DEPTH);
  t->h[t->n].lock = lock;
  t->h[t->n].cls = cls;
  t->h[t->n].file = file;
  t->h[t->n].line = line;
  t->n++;
}

static inline void
lockrank_forget (const void *lock, const char *file, int line)
{
  struct lockrank_held *t = &lockrank_held;
  unsigned i;

  /* Usually the last taken. */
  for (i = t->n; i-- > 0;)
    if (t->h[i].lock == lock) {
      t->h[i] = t->h[--t->n];
      return;
    }
  lockrank_fail ("unlocking at %s:%d a lock this thread does not hold",
                 file, line);
}

struct ranked_mutex {
  pthread_mutex_t m;
  enum lock_class cls;
};

static inline void
ranked_mutex_init (struct ranked_mutex *rm, enum lock_class cls)
{
  pthread_mutex_init (&rm->m, NULL);
  rm->cls = cls;
}

static inline void
ranked_lock_at (struct ranked_mutex *rm, const char *file, int line)
{
  lockrank_check (rm->cls, file, line);
  pthread_mutex_lock (&rm->m);
  lockrank_record (rm, rm->cls, file, line);
}

static inline int
ranked_trylock_at (struct ranked_mutex *rm, const char *file, int line)
{
  int r = pthread_mutex_trylock (&rm->m);

  if (r == 0)
    lockrank_record (rm, rm->cls, file, line);
  return r;
}

static inline void
ranked_unlock_at (struct ranked_mutex *rm, const char *file, int line)
{
  lockrank_forget (rm, file, line);
  pthread_mutex_unlock (&rm->m);
}

static inline void
ranked_cond_wait_at (pthread_cond_t *c, struct ranked_mutex *rm,
                     const char *file, int line)
{
  lockrank_forget (rm, file, line);
  /* Waking takes rm again under whatever else the thread holds. */
  lockrank_check (rm->cls, file, line);
  pthread_cond_wait (c, &rm->m);
  lockrank_record (rm, rm->cls, file, line);
}

static inline void
ranked_rdlock_at (pthread_rwlock_t *rw, enum lock_class cls,
                  const char *file, int line)
{
  lockrank_check (cls, file, line);
  pthread_rwlock_rdlock (rw);
  lockrank_record (rw, cls, file, line);
}

static inline void
ranked_rwunlock_at (pthread_rwlock_t *rw, const char *file, int line)
{
  lockrank_forget (rw, file, line);
  pthread_rwlock_unlock (rw);
}

#else /* !NBDCAS_LOCK_CHECKS: plain pthread calls */

#define LOCKRANK_DEFINE struct lockrank_unused

struct ranked_mutex {
  pthread_mutex_t m;
};

static inline void
ranked_mutex_init (struct ranked_mutex *rm, enum lock_class cls)
{
  pthread_mutex_init (&rm->m, NULL);
}

static inline void
ranked_lock_at (struct ranked_mutex *rm, const char *file, int line)
{
  pthread_mutex_lock (&rm->m);
}

static inline int
ranked_trylock_at (struct ranked_mutex *rm, const char *file, int line)
{
  return pthread_mutex_trylock (&rm->m);
}

static inline void
ranked_unlock_at (struct ranked_mutex *rm, const char *file, int line)
{
  pthread_mutex_unlock (&rm->m);
}

static inline void
ranked_cond_wait_at (pthread_cond_t *c, struct ranked_mutex *rm,
                     const char *file, int line)
{
  pthread_cond_wait (c, &rm->m);
}

static inline void
ranked_rdlock_at (pthread_rwlock_t *rw, enum lock_class cls,
                  const char *file, int line)
{
  pthread_rwlock_rdlock (rw);
}

static inline void
ranked_rwunlock_at (pthread_rwlock_t *rw, const char *file, int line)
{
  pthread_rwlock_unlock (rw);
}

#endif /* !NBDCAS_LOCK_CHECKS */

static inline void
ranked_mutex_destroy (struct ranked_mutex *rm)
{
  pthread_mutex_destroy (&rm->m);
}

#define ranked_lock(rm) ranked_lock_at ((rm), __FILE__, __LINE__)
#define ranked_trylock(rm) ranked_trylock_at ((rm), __FILE__, __LINE__)
#define ranked_unlock(rm) ranked_unlock_at ((rm), __FILE__, __LINE__)
#define ranked_cond_wait(c, rm) \
  ranked_cond_wait_at ((c), (rm), __FILE__, __LINE__)
/* A read lock of a pthread rwlock owned elsewhere (the store's gc_gate). */
#define ranked_rdlock(rw, cls) ranked_rdlock_at ((rw), (cls), __FILE__, __LINE__)
#define ranked_rwunlock(rw) ranked_rwunlock_at ((rw), __FILE__, __LINE__)

static inline void
ranked_cleanup_unlock (struct ranked_mutex **rm)
{
  ranked_unlock_at (*rm, __FILE__, __LINE__);
}
/* Lock rm until the end of the enclosing scope (cleanup.h's SCOPED_LOCK
 * for a ranked mutex).
 */
#define RANKED_SCOPED_LOCK(rm)                                          \
  __attribute__ ((cleanup (ranked_cleanup_unlock), unused))             \
  struct ranked_mutex *SCOPED_LOCK_CAT (ranked_lock_, __LINE__) = (rm); \
  ranked_lock (SCOPED_LOCK_CAT (ranked_lock_, __LINE__))

#endif /* NBDCAS_LOCKRANK_H */
