/* refs-collision: garbage collection's mark (plugins/cas/refs.c) against
 * two chunks whose hashes share their first 8 bytes (the key the mark set
 * is indexed by).  The review's finding F8: cas_refs_mark_root skips a map
 * node whose KEY is already in the set ("a subtree already marked"), so a
 * leaf whose key collides with a data chunk marked before it is never
 * read, and the blocks only it references stay unmarked -- garbage to the
 * sweep.  An 8-byte collision among 10^9 chunks has a few per cent of
 * chance (FORMAT.md); making one with SHA-256 costs 2^32 hashes of 32 KiB
 * leaves, so this program builds the tree over a fake chunk store whose
 * chunk names are chosen, not computed.
 *
 * Exit 0: every chunk the tree references is marked.  Exit 1: one is not
 * (the finding).  Exit 99: the test itself failed.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "storeint.h"

void
backend_error (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputc ('\n', stderr);
}

void
backend_debug (const char *fmt, ...)
{
  (void) fmt;
}

/* The fake store: a few map nodes by (chosen) name. */
#define NNODES 3
static struct {
  struct cas_hash name;
  struct cas_hash kids[CAS_MAP_FANOUT];
  uint32_t nkids;
} nodes[NNODES];

static int
fake_get (struct chunkstore *cs, const struct cas_hash *hash, void *buf,
          uint32_t bufsize, uint32_t *len, enum cas_verify verify)
{
  size_t i;

  (void) cs, (void) verify;
  for (i = 0; i < NNODES; i++)
    if (cas_hash_equal (&nodes[i].name, hash)) {
      uint32_t n = nodes[i].nkids * CAS_HASH_SIZE;
      if (n > bufsize) {
        errno = EIO;
        return -1;
      }
      memcpy (buf, nodes[i].kids, n);
      if (len)
        *len = n;
      return 0;
    }
  errno = ENOENT;
  return -1;
}

static const struct chunkstore_ops fake_ops = { .get = fake_get };

static struct cas_hash
name (uint8_t first, uint8_t tag)
{
  struct cas_hash h;

  memset (&h, first, sizeof h);
  h.b[31] = tag;                /* differs past the 8-byte key */
  return h;
}

int
main (void)
{
  struct chunkstore cs = { .ops = &fake_ops };
  struct cas_store st;
  struct cas_root root;
  struct cas_refs *refs;
  struct cas_hash d1, d2;

  memset (&st, 0, sizeof st);
  st.cs = &cs;
  st.verify = CAS_VERIFY_OFF;
  st.sb.blocksize = 65536;

  /* Depth 2: the root node R holds leaves L1 and L2.  L1 maps block 0 to
   * data D1, whose key equals L2's key; L2 maps block 1024 to D2.
   */
  d1 = name (0x22, 1);
  d2 = name (0x33, 1);
  nodes[0].name = name (0x11, 0);               /* R */
  nodes[0].kids[0] = name (0x44, 0);            /* L1 */
  nodes[0].kids[1] = name (0x22, 2);            /* L2: key of D1 */
  nodes[0].nkids = 2;
  nodes[1].name = name (0x44, 0);
  nodes[1].kids[0] = d1;
  nodes[1].nkids = 1;
  nodes[2].name = name (0x22, 2);
  nodes[2].kids[0] = d2;
  nodes[2].nkids = 1;

  memset (&root, 0, sizeof root);
  root.version = CAS_FORMAT_VERSION;
  root.blocksize = 65536;
  root.size = (uint64_t) 2 * CAS_MAP_FANOUT * 65536;
  root.fanout = CAS_MAP_FANOUT;
  root.depth = 2;
  root.root = nodes[0].name;

  refs = cas_refs_new (16);
  if (refs == NULL || cas_refs_mark_root (&st, refs, &root) == -1) {
    fprintf (stderr, "refs-collision: the mark failed\n");
    return 99;
  }
  if (!cas_refs_has (refs, &d1) || !cas_refs_has (refs, &d2)) {
    fprintf (stderr, "refs-collision: a chunk the tree references is not "
             "marked (D1 %d, D2 %d): garbage collection would remove it\n",
             cas_refs_has (refs, &d1), cas_refs_has (refs, &d2));
    cas_refs_free (refs);
    return 1;
  }
  cas_refs_free (refs);
  printf ("refs-collision: every referenced chunk is marked\n");
  return 0;
}
