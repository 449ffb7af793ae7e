/* NBD wire protocol: constants and on-the-wire layouts.
 *
 * Contract: the values follow doc/proto.md of NetworkBlockDevice/nbd
 * (fixed newstyle handshake, simple and structured replies, metadata
 * contexts).  Every multi-byte field on the wire is big-endian.  The
 * packed structs below describe layouts only: code copies bytes into or
 * out of them with memcpy (never casts a byte buffer to a struct pointer,
 * so nothing is accessed unaligned) and converts each field explicitly
 * with htobe16/32/64 and be16/32/64toh.
 *
 * Thread safety: constants and types only.
 */
#ifndef NBDCAS_NBD_PROTOCOL_H
#define NBDCAS_NBD_PROTOCOL_H

#include <endian.h>
#include <stdint.h>

/* Handshake magics. */
#define NBD_MAGIC           UINT64_C (0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_OPT_MAGIC       UINT64_C (0x49484156454f5054) /* "IHAVEOPT" */
#define NBD_REP_MAGIC       UINT64_C (0x0003e889045565a9)

/* Handshake flags (server, 16 bits) and client flags (32 bits). */
#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* Options. */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_PEEK_EXPORT       4
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

/* Option replies; errors have bit 31 set. */
#define NBD_REP_ACK           1
#define NBD_REP_SERVER        2
#define NBD_REP_INFO          3
#define NBD_REP_META_CONTEXT  4
#define NBD_REP_ERR(n)        (UINT32_C (0x80000000) | (n))
#define NBD_REP_ERR_UNSUP           NBD_REP_ERR (1)
#define NBD_REP_ERR_POLICY          NBD_REP_ERR (2)
#define NBD_REP_ERR_INVALID         NBD_REP_ERR (3)
#define NBD_REP_ERR_PLATFORM        NBD_REP_ERR (4)
#define NBD_REP_ERR_TLS_REQD        NBD_REP_ERR (5)
#define NBD_REP_ERR_UNKNOWN         NBD_REP_ERR (6)
#define NBD_REP_ERR_SHUTDOWN        NBD_REP_ERR (7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR (8)
#define NBD_REP_ERR_TOO_BIG         NBD_REP_ERR (9)

/* NBD_REP_INFO types. */
#define NBD_INFO_EXPORT      0
#define NBD_INFO_NAME        1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE  3

/* Transmission flags (16 bits). */
#define NBD_FLAG_HAS_FLAGS         (1u << 0)
#define NBD_FLAG_READ_ONLY         (1u << 1)
#define NBD_FLAG_SEND_FLUSH        (1u << 2)
#define NBD_FLAG_SEND_FUA          (1u << 3)
#define NBD_FLAG_ROTATIONAL        (1u << 4)
#define NBD_FLAG_SEND_TRIM         (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF           (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1u << 8)
#define NBD_FLAG_SEND_RESIZE       (1u << 9)
#define NBD_FLAG_SEND_CACHE        (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1u << 11)

/* Transmission phase magics. */
#define NBD_REQUEST_MAGIC          UINT32_C (0x25609513)
#define NBD_SIMPLE_REPLY_MAGIC     UINT32_C (0x67446698)
#define NBD_STRUCTURED_REPLY_MAGIC UINT32_C (0x668e33ef)

/* Commands. */
#define NBD_CMD_READ         0
#define NBD_CMD_WRITE        1
#define NBD_CMD_DISC         2
#define NBD_CMD_FLUSH        3
#define NBD_CMD_TRIM         4
#define NBD_CMD_CACHE        5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7

/* Command flags. */
#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF        (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* Structured reply flags and chunk types. */
#define NBD_REPLY_FLAG_DONE           (1u << 0)
#define NBD_REPLY_TYPE_NONE           0
#define NBD_REPLY_TYPE_OFFSET_DATA    1
#define NBD_REPLY_TYPE_OFFSET_HOLE    2
#define NBD_REPLY_TYPE_BLOCK_STATUS   5
#define NBD_REPLY_TYPE_ERROR          ((1u << 15) + 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET   ((1u << 15) + 2)

/* base:allocation status bits. */
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* Error values (the spec fixes these numbers; they are not host errno). */
#define NBD_SUCCESS    0
#define NBD_EPERM      1
#define NBD_EIO        5
#define NBD_ENOMEM     12
#define NBD_EINVAL     22
#define NBD_ENOSPC     28
#define NBD_EOVERFLOW  75
#define NBD_ENOTSUP    95
#define NBD_ESHUTDOWN  108

/* Limits the spec fixes. */
#define NBD_MAX_STRING 4096       /* export names, messages, queries */

/* Wire layouts. */
#define NBD_PACKED __attribute__ ((__packed__))

/* S: greeting (newstyle). */
struct nbd_greeting {
  uint64_t nbdmagic;         /* NBD_MAGIC */
  uint64_t version;          /* NBD_OPT_MAGIC */
  uint16_t gflags;           /* handshake flags */
} NBD_PACKED;

/* C: option header, followed by optlen bytes. */
struct nbd_option {
  uint64_t magic;            /* NBD_OPT_MAGIC */
  uint32_t option;
  uint32_t optlen;
} NBD_PACKED;

/* S: option reply header, followed by replylen bytes. */
struct nbd_option_reply {
  uint64_t magic;            /* NBD_REP_MAGIC */
  uint32_t option;
  uint32_t reply;
  uint32_t replylen;
} NBD_PACKED;

/* S: reply to NBD_OPT_EXPORT_NAME (124 zero bytes may follow). */
struct nbd_export_name_reply {
  uint64_t exportsize;
  uint16_t eflags;
} NBD_PACKED;

/* Payloads of NBD_REP_INFO. */
struct nbd_info_export {
  uint16_t info;             /* NBD_INFO_EXPORT */
  uint64_t exportsize;
  uint16_t eflags;
} NBD_PACKED;

struct nbd_info_block_size {
  uint16_t info;             /* NBD_INFO_BLOCK_SIZE */
  uint32_t minimum;
  uint32_t preferred;
  uint32_t maximum;
} NBD_PACKED;

/* C: request header (a WRITE is followed by count bytes). */
struct nbd_request {
  uint32_t magic;            /* NBD_REQUEST_MAGIC */
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t count;
} NBD_PACKED;

/* S: simple reply (a successful READ is followed by the data). */
struct nbd_simple_reply {
  uint32_t magic;            /* NBD_SIMPLE_REPLY_MAGIC */
  uint32_t error;
  uint64_t cookie;
} NBD_PACKED;

/* S: structured reply chunk header, followed by length bytes. */
struct nbd_structured_reply {
  uint32_t magic;            /* NBD_STRUCTURED_REPLY_MAGIC */
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint32_t length;
} NBD_PACKED;

struct nbd_chunk_offset_data {
  uint64_t offset;           /* data follows */
} NBD_PACKED;

struct nbd_chunk_offset_hole {
  uint64_t offset;
  uint32_t length;
} NBD_PACKED;

struct nbd_chunk_error {
  uint32_t error;
  uint16_t len;              /* message follows */
} NBD_PACKED;

struct nbd_block_descriptor {
  uint32_t length;
  uint32_t status_flags;
} NBD_PACKED;

_Static_assert (sizeof (struct nbd_greeting) == 18, "greeting");
_Static_assert (sizeof (struct nbd_option) == 16, "option");
_Static_assert (sizeof (struct nbd_option_reply) == 20, "option reply");
_Static_assert (sizeof (struct nbd_export_name_reply) == 10, "export");
_Static_assert (sizeof (struct nbd_info_export) == 12, "info export");
_Static_assert (sizeof (struct nbd_info_block_size) == 14, "info bs");
_Static_assert (sizeof (struct nbd_request) == 28, "request");
_Static_assert (sizeof (struct nbd_simple_reply) == 16, "simple reply");
_Static_assert (sizeof (struct nbd_structured_reply) == 20, "sreply");
_Static_assert (sizeof (struct nbd_chunk_offset_data) == 8, "data");
_Static_assert (sizeof (struct nbd_chunk_offset_hole) == 12, "hole");
_Static_assert (sizeof (struct nbd_chunk_error) == 6, "error");
_Static_assert (sizeof (struct nbd_block_descriptor) == 8, "desc");

#endif /* NBDCAS_NBD_PROTOCOL_H */
