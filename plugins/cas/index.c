/* Sharded open-addressing hash index; see index.h. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "cleanup.h"
#include "crc32c.h"
#include "index.h"
#include "le.h"

#define NSHARDS 64
#define SHARD_BITS 6
#define INITIAL_SLOTS 256        /* per shard: 4 KiB */
#define INDEX_MAGIC "NBDCASIX"
#define INDEX_VERSION 1
#define INDEX_HEADER_SIZE 64
#define ENTRY_SIZE 16

struct entry {
  uint64_t key;                  /* first 8 bytes of the hash, LE */
  uint64_t loc;                  /* 0: empty */
};
_Static_assert (sizeof (struct entry) == ENTRY_SIZE, "entry size");

struct shard {
  pthread_rwlock_t lock;
  struct entry *tab;
  uint64_t mask;                 /* slots - 1 */
  uint64_t count;
} __attribute__ ((aligned (64)));

struct cas_index {
  struct shard shards[NSHARDS];
};

static inline uint64_t
hash_key (const struct cas_hash *h)
{
  return get_le64 (h->b);
}

/* The top bits pick the shard, the low bits the slot: SHA-256 bits are
 * independent, so both are uniform.
 */
static inline struct shard *
shard_of (struct cas_index *idx, uint64_t key)
{
  return &idx->shards[key >> (64 - SHARD_BITS)];
}

struct cas_index *
cas_index_new (void)
{
  struct cas_index *idx;
  size_t i;

  if (posix_memalign ((void **) &idx, 64, sizeof *idx) != 0) {
    errno = ENOMEM;
    return NULL;
  }
  for (i = 0; i < NSHARDS; i++) {
    struct shard *s = &idx->shards[i];
    pthread_rwlock_init (&s->lock, NULL);
    s->tab = calloc (INITIAL_SLOTS, sizeof *s->tab);
    s->mask = INITIAL_SLOTS - 1;
    s->count = 0;
    if (s->tab == NULL) {
      while (i-- > 0)
        free (idx->shards[i].tab);
      free (idx);
      errno = ENOMEM;
      return NULL;
    }
  }
  return idx;
}

void
cas_index_free (struct cas_index *idx)
{
  size_t i;

  if (!idx)
    return;
  for (i = 0; i < NSHARDS; i++) {
    free (idx->shards[i].tab);
    pthread_rwlock_destroy (&idx->shards[i].lock);
  }
  free (idx);
}

void
cas_index_clear (struct cas_index *idx)
{
  size_t i;

  for (i = 0; i < NSHARDS; i++) {
    struct shard *s = &idx->shards[i];
    pthread_rwlock_wrlock (&s->lock);
    memset (s->tab, 0, (s->mask + 1) * sizeof *s->tab);
    s->count = 0;
    pthread_rwlock_unlock (&s->lock);
  }
}

int
cas_index_lookup (struct cas_index *idx, const struct cas_hash *hash,
                  uint64_t *locs, int max)
{
  uint64_t key = hash_key (hash);
  struct shard *s = shard_of (idx, key);
  uint64_t i;
  int n = 0;

  pthread_rwlock_rdlock (&s->lock);
  for (i = key & s->mask; s->tab[i].loc != 0; i = (i + 1) & s->mask) {
    if (s->tab[i].key == key && n < max)
      locs[n++] = s->tab[i].loc;
  }
  pthread_rwlock_unlock (&s->lock);
  return n;
}

/* Place without checks; caller holds the write lock, table has room. */
static void
place (struct entry *tab, uint64_t mask, uint64_t key, uint64_t loc)
{
  uint64_t i;

  for (i = key & mask; tab[i].loc != 0; i = (i + 1) & mask)
    ;
  tab[i].key = key;
  tab[i].loc = loc;
}

static int
grow (struct shard *s, uint64_t want_slots)
{
  uint64_t slots = s->mask + 1, i;
  struct entry *tab;

  while (slots < want_slots)
    slots *= 2;
  if (slots == s->mask + 1)
    return 0;
  tab = calloc (slots, sizeof *tab);
  if (tab == NULL) {
    errno = ENOMEM;
    return -1;
  }
  for (i = 0; i <= s->mask; i++)
    if (s->tab[i].loc != 0)
      place (tab, slots - 1, s->tab[i].key, s->tab[i].loc);
  free (s->tab);
  s->tab = tab;
  s->mask = slots - 1;
  return 0;
}

/* Slots needed to hold n entries at <= 80% load. */
static inline uint64_t
slots_for (uint64_t n)
{
  return n + n / 4 + 1;
}

int
cas_index_insert (struct cas_index *idx, const struct cas_hash *hash,
                  uint64_t loc)
{
  uint64_t key = hash_key (hash);
  struct shard *s = shard_of (idx, key);
  uint64_t i;
  int r = 0;

  pthread_rwlock_wrlock (&s->lock);
  /* The same record twice (a rescan overlapping the cache): keep one. */
  for (i = key & s->mask; s->tab[i].loc != 0; i = (i + 1) & s->mask)
    if (s->tab[i].key == key && s->tab[i].loc == loc)
      goto out;
  if (slots_for (s->count + 1) > s->mask + 1 &&
      grow (s, slots_for (s->count + 1)) == -1) {
    r = -1;
    goto out;
  }
  place (s->tab, s->mask, key, loc);
  s->count++;
 out:
  pthread_rwlock_unlock (&s->lock);
  return r;
}

int
cas_index_remove (struct cas_index *idx, const struct cas_hash *hash,
                  uint64_t loc)
{
  uint64_t key = hash_key (hash);
  struct shard *s = shard_of (idx, key);
  uint64_t i, j, home;
  int r = 0;

  pthread_rwlock_wrlock (&s->lock);
  for (i = key & s->mask; s->tab[i].loc != 0; i = (i + 1) & s->mask)
    if (s->tab[i].key == key && s->tab[i].loc == loc)
      break;
  if (s->tab[i].loc == 0)
    goto out;
  /* Backward-shift deletion (no tombstones): move later entries of the
   * probe run into the hole unless their home slot lies cyclically in
   * (hole, j].
   */
  for (j = (i + 1) & s->mask; s->tab[j].loc != 0; j = (j + 1) & s->mask) {
    home = s->tab[j].key & s->mask;
    if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
      s->tab[i] = s->tab[j];
      i = j;
    }
  }
  s->tab[i].key = 0;
  s->tab[i].loc = 0;
  s->count--;
  r = 1;
 out:
  pthread_rwlock_unlock (&s->lock);
  return r;
}

uint64_t
cas_index_count (struct cas_index *idx)
{
  uint64_t n = 0;
  size_t i;

  for (i = 0; i < NSHARDS; i++) {
    pthread_rwlock_rdlock (&idx->shards[i].lock);
    n += idx->shards[i].count;
    pthread_rwlock_unlock (&idx->shards[i].lock);
  }
  return n;
}

bool
cas_index_has_loc_in (struct cas_index *idx, uint64_t lo, uint64_t hi)
{
  size_t i;
  uint64_t j;

  for (i = 0; i < NSHARDS; i++) {
    struct shard *s = &idx->shards[i];
    bool found = false;

    pthread_rwlock_rdlock (&s->lock);
    for (j = 0; j <= s->mask && !found; j++)
      found = s->tab[j].loc >= lo && s->tab[j].loc < hi;
    pthread_rwlock_unlock (&s->lock);
    if (found)
      return true;
  }
  return false;
}

uint64_t
cas_index_slots (struct cas_index *idx)
{
  uint64_t n = 0;
  size_t i;

  for (i = 0; i < NSHARDS; i++) {
    pthread_rwlock_rdlock (&idx->shards[i].lock);
    n += idx->shards[i].mask + 1;
    pthread_rwlock_unlock (&idx->shards[i].lock);
  }
  return n;
}

uint64_t
cas_index_memory (struct cas_index *idx)
{
  return sizeof *idx + cas_index_slots (idx) * sizeof (struct entry);
}

/* File: header (64 bytes: 0 magic[8] 8 version 12 hw_pack 16 hw_off
 * 24 count 32 entries_crc 36 reserved 60 header crc), then count entries
 * of 16 bytes {key LE, loc LE}.
 */
int
cas_index_save (struct cas_index *idx, const char *path,
                uint32_t hw_pack, uint64_t hw_off)
{
  CLEANUP_FREE char *tmp = NULL;
  uint8_t hdr[INDEX_HEADER_SIZE];
  uint8_t buf[ENTRY_SIZE * 4096];
  size_t used = 0, i;
  uint64_t j, count = 0;
  uint32_t crc = 0;
  FILE *fp;

  if (asprintf (&tmp, "%s.tmp", path) == -1) {
    tmp = NULL;
    return -1;
  }
  fp = fopen (tmp, "w");
  if (fp == NULL)
    goto err;
  memset (hdr, 0, sizeof hdr);   /* placeholder, rewritten at the end */
  if (fwrite (hdr, sizeof hdr, 1, fp) != 1)
    goto err_close;
  for (i = 0; i < NSHARDS; i++) {
    struct shard *s = &idx->shards[i];
    pthread_rwlock_rdlock (&s->lock);
    for (j = 0; j <= s->mask; j++) {
      if (s->tab[j].loc == 0)
        continue;
      put_le64 (buf + used, s->tab[j].key);
      put_le64 (buf + used + 8, s->tab[j].loc);
      used += ENTRY_SIZE;
      count++;
      if (used == sizeof buf) {
        crc = crc32c (crc, buf, used);
        if (fwrite (buf, used, 1, fp) != 1) {
          pthread_rwlock_unlock (&s->lock);
          goto err_close;
        }
        used = 0;
      }
    }
    pthread_rwlock_unlock (&s->lock);
  }
  if (used) {
    crc = crc32c (crc, buf, used);
    if (fwrite (buf, used, 1, fp) != 1)
      goto err_close;
  }
  memcpy (hdr, INDEX_MAGIC, 8);
  put_le32 (hdr + 8, INDEX_VERSION);
  put_le32 (hdr + 12, hw_pack);
  put_le64 (hdr + 16, hw_off);
  put_le64 (hdr + 24, count);
  put_le32 (hdr + 32, crc);
  put_le32 (hdr + 60, crc32c (0, hdr, 60));
  if (fseek (fp, 0, SEEK_SET) == -1 || fwrite (hdr, sizeof hdr, 1, fp) != 1 ||
      fflush (fp) == EOF || fsync (fileno (fp)) == -1)
    goto err_close;
  if (fclose (fp) == EOF)
    goto err;
  if (rename (tmp, path) == -1)
    goto err;
  return 0;

 err_close:
  fclose (fp);
 err:
  backend_error ("cas: writing index cache %s: %m", tmp);
  unlink (tmp);
  return -1;
}

int
cas_index_load (struct cas_index *idx, const char *path,
                uint32_t *hw_pack, uint64_t *hw_off)
{
  uint8_t hdr[INDEX_HEADER_SIZE];
  uint8_t buf[ENTRY_SIZE * 4096];
  uint64_t count, done = 0;
  uint32_t crc = 0, want_crc;
  struct stat sb;
  FILE *fp;
  size_t i;

  fp = fopen (path, "r");
  if (fp == NULL)
    return -1;
  if (fstat (fileno (fp), &sb) == -1 || sb.st_size < INDEX_HEADER_SIZE ||
      fread (hdr, sizeof hdr, 1, fp) != 1 ||
      memcmp (hdr, INDEX_MAGIC, 8) != 0 ||
      get_le32 (hdr + 8) != INDEX_VERSION ||
      get_le32 (hdr + 60) != crc32c (0, hdr, 60))
    goto bad;
  *hw_pack = get_le32 (hdr + 12);
  *hw_off = get_le64 (hdr + 16);
  count = get_le64 (hdr + 24);
  want_crc = get_le32 (hdr + 32);
  /* The header CRC only says the header is what some writer wrote, not
   * that the count is sane: size nothing from it until it agrees with
   * the file, which is what we are about to read (a count of 2^60 would
   * otherwise make grow() ask for 2^59 slots).
   */
  if ((uint64_t) (sb.st_size - INDEX_HEADER_SIZE) % ENTRY_SIZE != 0 ||
      count != (uint64_t) (sb.st_size - INDEX_HEADER_SIZE) / ENTRY_SIZE ||
      count > SIZE_MAX / ENTRY_SIZE / 4) {
    backend_debug ("cas: index cache %s: %" PRIu64 " entries in the header "
                   "but %jd bytes in the file: ignoring it", path, count,
                   (intmax_t) sb.st_size);
    goto bad;
  }
  /* Size every shard once, instead of doubling its way up. */
  for (i = 0; i < NSHARDS; i++) {
    struct shard *s = &idx->shards[i];
    if (grow (s, slots_for (count / NSHARDS + count / NSHARDS / 16 + 16)) == -1)
      goto bad;
  }
  while (done < count) {
    uint64_t n = count - done;
    size_t k;
    if (n > sizeof buf / ENTRY_SIZE)
      n = sizeof buf / ENTRY_SIZE;
    if (fread (buf, n * ENTRY_SIZE, 1, fp) != 1)
      goto bad;
    crc = crc32c (crc, buf, n * ENTRY_SIZE);
    for (k = 0; k < n; k++) {
      struct cas_hash h;
      uint64_t loc = get_le64 (buf + k * ENTRY_SIZE + 8);
      memset (&h, 0, sizeof h);
      memcpy (h.b, buf + k * ENTRY_SIZE, 8);
      if (loc == 0 || cas_index_insert (idx, &h, loc) == -1)
        goto bad;
    }
    done += n;
  }
  if (crc != want_crc || fgetc (fp) != EOF)
    goto bad;
  fclose (fp);
  return 0;

 bad:
  fclose (fp);
  cas_index_clear (idx);
  errno = EIO;
  return -1;
}
