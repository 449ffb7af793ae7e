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
#include "format.h"
#include "index.h"
#include "le.h"

#define NSHARDS 64
#define SHARD_BITS 6
#define INITIAL_SLOTS 256        /* per shard: 4 KiB */
#define INDEX_MAGIC "NBDCASIX"
#define INDEX_VERSION 2
#define INDEX_VERSION_EXTENTS 4  /* with the extent section (format 4) */
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

/* An entry's location, read atomically: see cas_index_set_verified. */
static inline uint64_t
load_loc (struct entry *e)
{
  return __atomic_load_n (&e->loc, __ATOMIC_RELAXED);
}

int
cas_index_lookup (struct cas_index *idx, const struct cas_hash *hash,
                  uint64_t *locs, int max)
{
  uint64_t key = hash_key (hash);
  struct shard *s = shard_of (idx, key);
  uint64_t i, l;
  int n = 0;

  pthread_rwlock_rdlock (&s->lock);
  /* Under the read lock another reader may set an entry's verified bit
   * (cas_index_set_verified): loc is read atomically.
   */
  for (i = key & s->mask; (l = load_loc (&s->tab[i])) != 0;
       i = (i + 1) & s->mask) {
    if (s->tab[i].key == key && n < max)
      locs[n++] = l;
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
  loc = CAS_LOC_PLAIN (loc);
  /* The same record twice (a rescan overlapping the cache): keep one. */
  for (i = key & s->mask; s->tab[i].loc != 0; i = (i + 1) & s->mask)
    if (s->tab[i].key == key && CAS_LOC_PLAIN (s->tab[i].loc) == loc)
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

void
cas_index_set_verified (struct cas_index *idx, const struct cas_hash *hash,
                        uint64_t loc)
{
  uint64_t key = hash_key (hash);
  struct shard *s = shard_of (idx, key);
  uint64_t i, l;

  loc = CAS_LOC_PLAIN (loc);
  /* A read lock is enough: the flag is the entry's own bit, set with an
   * atomic OR, and nothing else changes the slot without the write lock.
   */
  pthread_rwlock_rdlock (&s->lock);
  for (i = key & s->mask; (l = load_loc (&s->tab[i])) != 0;
       i = (i + 1) & s->mask)
    if (s->tab[i].key == key && CAS_LOC_PLAIN (l) == loc) {
      __atomic_fetch_or (&s->tab[i].loc, CAS_LOC_VERIFIED, __ATOMIC_RELAXED);
      break;
    }
  pthread_rwlock_unlock (&s->lock);
}

int
cas_index_remove (struct cas_index *idx, const struct cas_hash *hash,
                  uint64_t loc)
{
  uint64_t key = hash_key (hash);
  struct shard *s = shard_of (idx, key);
  uint64_t i, j, home;
  int r = 0;

  loc = CAS_LOC_PLAIN (loc);
  pthread_rwlock_wrlock (&s->lock);
  for (i = key & s->mask; s->tab[i].loc != 0; i = (i + 1) & s->mask)
    if (s->tab[i].key == key && CAS_LOC_PLAIN (s->tab[i].loc) == loc)
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

void
cas_index_last_offsets (struct cas_index *idx, uint64_t *last,
                        uint32_t npacks)
{
  size_t i;
  uint64_t j;

  memset (last, 0, ((size_t) npacks + 1) * sizeof *last);
  for (i = 0; i < NSHARDS; i++) {
    struct shard *s = &idx->shards[i];

    pthread_rwlock_rdlock (&s->lock);
    for (j = 0; j <= s->mask; j++) {
      uint64_t loc = load_loc (&s->tab[j]);
      uint32_t p = CAS_LOC_PACK (loc);
      if (loc != 0 && p >= 1 && p <= npacks &&
          CAS_LOC_OFFSET (loc) > last[p])
        last[p] = CAS_LOC_OFFSET (loc);
    }
    pthread_rwlock_unlock (&s->lock);
  }
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

/* File (FORMAT.md, "The index cache"): a 64-byte header, the pack
 * table (PACK_ENTRY_SIZE bytes per pack 1..npacks), then the entries
 * (16 bytes: key LE, location LE).
 */
#define PACK_ENTRY_SIZE 32

static void
encode_pack (const struct cas_index_pack *p, uint8_t *b)
{
  memset (b, 0, PACK_ENTRY_SIZE);
  put_le64 (b, p->covered);
  put_le64 (b + 8, p->size);
  put_le64 (b + 16, p->last);
  put_le32 (b + 24, p->last_crc);
}

static void
decode_pack (const uint8_t *b, struct cas_index_pack *p)
{
  p->covered = get_le64 (b);
  p->size = get_le64 (b + 8);
  p->last = get_le64 (b + 16);
  p->last_crc = get_le32 (b + 24);
}

int
cas_index_save (struct cas_index *idx, const char *path,
                const uint8_t uuid[16],
                const struct cas_index_pack *packs, uint32_t npacks)
{
  return cas_index_save_section (idx, path, uuid, packs, npacks, NULL);
}

int
cas_index_load (struct cas_index *idx, const char *path,
                const uint8_t uuid[16],
                struct cas_index_pack **packs_ret, uint32_t *npacks_ret)
{
  return cas_index_load_section (idx, path, uuid, packs_ret, npacks_ret,
                                 NULL);
}

int
cas_index_save_section (struct cas_index *idx, const char *path,
                        const uint8_t uuid[16],
                        const struct cas_index_pack *packs, uint32_t npacks,
                        const struct cas_index_section *sec)
{
  CLEANUP_FREE char *tmp = NULL, *dir = NULL;
  uint8_t hdr[INDEX_HEADER_SIZE];
  uint8_t buf[ENTRY_SIZE * 4096];
  size_t used = 0, i;
  uint64_t j, count = 0;
  uint32_t crc = 0, table_crc = 0, p;
  FILE *fp;
  char *slash;

  if (asprintf (&tmp, "%s.tmp", path) == -1) {
    tmp = NULL;
    return -1;
  }
  fp = fopen (tmp, "we");
  if (fp == NULL)
    goto err;
  memset (hdr, 0, sizeof hdr);   /* placeholder, rewritten at the end */
  if (fwrite (hdr, sizeof hdr, 1, fp) != 1)
    goto err_close;
  for (p = 1; p <= npacks; p++) {
    uint8_t b[PACK_ENTRY_SIZE];
    encode_pack (&packs[p], b);
    table_crc = crc32c (table_crc, b, sizeof b);
    if (fwrite (b, sizeof b, 1, fp) != 1)
      goto err_close;
  }
  for (i = 0; i < NSHARDS; i++) {
    struct shard *s = &idx->shards[i];
    pthread_rwlock_rdlock (&s->lock);
    for (j = 0; j <= s->mask; j++) {
      uint64_t loc = load_loc (&s->tab[j]);
      /* An entry into a pack the table does not cover is left out: the
       * opener scans that pack whole.
       */
      if (loc == 0 || CAS_LOC_PACK (loc) > npacks)
        continue;
      put_le64 (buf + used, s->tab[j].key);
      put_le64 (buf + used + 8, CAS_LOC_PLAIN (loc));
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
  if (sec && sec->save (sec->opaque, fp, npacks) == -1)
    goto err_close;
  memcpy (hdr, INDEX_MAGIC, 8);
  put_le32 (hdr + 8, sec ? INDEX_VERSION_EXTENTS : INDEX_VERSION);
  put_le32 (hdr + 12, npacks);
  put_le64 (hdr + 16, count);
  put_le32 (hdr + 24, crc);
  put_le32 (hdr + 28, table_crc);
  memcpy (hdr + 32, uuid, 16);
  put_le32 (hdr + 60, crc32c (0, hdr, 60));
  if (fseek (fp, 0, SEEK_SET) == -1 || fwrite (hdr, sizeof hdr, 1, fp) != 1 ||
      fflush (fp) == EOF || fsync (fileno (fp)) == -1)
    goto err_close;
  if (fclose (fp) == EOF)
    goto err;
  if (rename (tmp, path) == -1)
    goto err;
  /* Not needed for safety (a lost rename leaves the older cache, which
   * is checked like any other), but a cache that vanishes at every power
   * cut would make every such restart rescan.
   */
  dir = strdup (path);
  if (dir && (slash = strrchr (dir, '/')) != NULL) {
    int fd;
    *slash = '\0';
    fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      fsync (fd);
      close (fd);
    }
  }
  return 0;

 err_close:
  fclose (fp);
 err:
  backend_error ("cas: writing index cache %s: %m", tmp);
  unlink (tmp);
  return -1;
}

int
cas_index_load_section (struct cas_index *idx, const char *path,
                        const uint8_t uuid[16],
                        struct cas_index_pack **packs_ret,
                        uint32_t *npacks_ret,
                        const struct cas_index_section *sec)
{
  uint8_t hdr[INDEX_HEADER_SIZE];
  uint8_t buf[ENTRY_SIZE * 4096];
  uint64_t count, done = 0, expect_size;
  uint32_t crc = 0, want_crc, table_crc = 0, want_table_crc, npacks, p;
  struct cas_index_pack *packs = NULL;
  const char *why = "damaged";
  int err = EIO;
  struct stat sb;
  FILE *fp;
  size_t i;

  fp = fopen (path, "re");
  if (fp == NULL)
    return -1;
  if (fstat (fileno (fp), &sb) == -1 || sb.st_size < INDEX_HEADER_SIZE ||
      fread (hdr, sizeof hdr, 1, fp) != 1 ||
      memcmp (hdr, INDEX_MAGIC, 8) != 0 ||
      get_le32 (hdr + 60) != crc32c (0, hdr, 60))
    goto bad;
  if (get_le32 (hdr + 8) != (sec ? INDEX_VERSION_EXTENTS : INDEX_VERSION)) {
    why = "of another version";
    err = EPROTO;
    goto bad;
  }
  if (memcmp (hdr + 32, uuid, 16) != 0) {
    why = "of another store (its store UUID differs)";
    err = ESTALE;
    goto bad;
  }
  npacks = get_le32 (hdr + 12);
  count = get_le64 (hdr + 16);
  want_crc = get_le32 (hdr + 24);
  want_table_crc = get_le32 (hdr + 28);
  /* The header CRC only says the header is what some writer wrote, not
   * that its numbers are sane: size nothing from them until they agree
   * with the file (a count of 2^60 would otherwise make grow() ask for
   * 2^59 slots).
   */
  expect_size = INDEX_HEADER_SIZE + (uint64_t) npacks * PACK_ENTRY_SIZE;
  if (npacks >= CAS_MAX_PACKS || count > SIZE_MAX / ENTRY_SIZE / 4 ||
      (uint64_t) sb.st_size < expect_size ||
      (sec ? (uint64_t) (sb.st_size - expect_size) < count * ENTRY_SIZE
       : (uint64_t) (sb.st_size - expect_size) != count * ENTRY_SIZE)) {
    why = "inconsistent with its size";
    goto bad;
  }
  packs = calloc ((size_t) npacks + 1, sizeof *packs);
  if (packs == NULL)
    goto bad;
  for (p = 1; p <= npacks; p++) {
    uint8_t b[PACK_ENTRY_SIZE];
    if (fread (b, sizeof b, 1, fp) != 1)
      goto bad;
    table_crc = crc32c (table_crc, b, sizeof b);
    decode_pack (b, &packs[p]);
  }
  if (table_crc != want_table_crc)
    goto bad;
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
      /* An entry must point into a pack the table covers. */
      if (loc == 0 || (loc & CAS_LOC_VERIFIED) ||
          CAS_LOC_PACK (loc) == 0 || CAS_LOC_PACK (loc) > npacks ||
          CAS_LOC_OFFSET (loc) >= packs[CAS_LOC_PACK (loc)].covered ||
          cas_index_insert (idx, &h, loc) == -1)
        goto bad;
    }
    done += n;
  }
  if (crc != want_crc)
    goto bad;
  /* The section checks itself; it must take the rest of the file. */
  if (sec && sec->load (sec->opaque, fp,
                        (uint64_t) sb.st_size - expect_size
                        - count * ENTRY_SIZE, packs, npacks) == -1)
    goto bad;
  if (fgetc (fp) != EOF)
    goto bad;
  fclose (fp);
  *packs_ret = packs;
  *npacks_ret = npacks;
  return 0;

 bad:
  backend_debug ("cas: index cache %s is %s: ignoring it", path, why);
  fclose (fp);
  free (packs);
  cas_index_clear (idx);
  errno = err;
  return -1;
}
