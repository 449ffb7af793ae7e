#!/usr/bin/env python3
# Writes the seed corpora under fuzz/corpus/ (committed; rerun only to
# change them).  Handshake seeds reproduce the option sequences real
# clients send (libnbd/nbdinfo: STRUCTURED_REPLY, SET_META_CONTEXT
# base:allocation, GO with INFO requests; nbdinfo --list: LIST then INFO
# per export; qemu/the kernel client: the old EXPORT_NAME), plus the odd
# ones (STARTTLS, unknown options, ABORT).  Request seeds start with the
# session selector byte of fuzz-requests.c.  Casstore seeds follow the
# input layout documented in fuzz-casstore.c.
#
#   python3 fuzz/make-seeds.py fuzz/corpus
import os
import struct
import sys

OPT_MAGIC = 0x49484156454f5054
REQ_MAGIC = 0x25609513
(EXPORT_NAME, ABORT, LIST, PEEK, STARTTLS, INFO, GO, STRUCTURED, LIST_META,
 SET_META) = range(1, 11)
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WZ, BS = range(8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16


def opt(o, payload=b""):
    return struct.pack(">QII", OPT_MAGIC, o, len(payload)) + payload


def name(s):
    s = s.encode()
    return struct.pack(">I", len(s)) + s


def info_go(o, export, infos=(1, 3)):
    return opt(o, name(export) + struct.pack(">H", len(infos)) +
               b"".join(struct.pack(">H", i) for i in infos))


def meta(o, export, queries):
    return opt(o, name(export) + struct.pack(">I", len(queries)) +
               b"".join(name(q) for q in queries))


def req(cmd, off=0, count=0, flags=0, cookie=1, data=b""):
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, off,
                       count) + data


FLAGS = struct.pack(">I", 3)
LIBNBD = (FLAGS + opt(STRUCTURED) +
          meta(SET_META, "", ["base:allocation"]) + info_go(GO, ""))

handshake = {
    "libnbd-go": LIBNBD + req(READ, 0, 512) + req(BS, 0, 65536, cookie=2) +
    req(DISC),
    "nbdinfo-list": FLAGS + opt(STRUCTURED) + opt(LIST) +
    info_go(INFO, "") + info_go(INFO, "ro", (0, 1, 2, 3)) +
    info_go(INFO, "small") + info_go(INFO, "emul") + opt(ABORT),
    "export-name": struct.pack(">I", 1) + opt(EXPORT_NAME, b"small") +
    req(READ, 0, 512) + req(DISC),
    "odd-options": FLAGS + opt(STARTTLS) + opt(STARTTLS, b"x") +
    opt(42, b"hello") + opt(PEEK) + meta(LIST_META, "", ["base:"]) +
    opt(STRUCTURED) + meta(LIST_META, "", []) +
    meta(LIST_META, "", ["qemu:dirty-bitmap:a", "base:allocation"]) +
    meta(SET_META, "ro", ["base:allocation"]) + info_go(GO, "nosuch") +
    info_go(GO, "ro") + req(WRITE, 0, 4, data=b"abcd") + req(DISC),
    "too-big": FLAGS + struct.pack(">QII", OPT_MAGIC, 99, 70000) +
    b"\0" * 70000 + opt(ABORT),
    "bad-magic": FLAGS + struct.pack(">QII", 0x1234, GO, 0),
}

data4k = bytes((i * 7) & 255 for i in range(4096))
requests = {
    "rw-default": b"\x00" + req(WRITE, 0, 4096, data=data4k) +
    req(READ, 0, 4096, cookie=2) + req(FLUSH, cookie=3) +
    req(BS, 0, 1 << 20, cookie=4) + req(BS, 4096, 8192, REQ_ONE, cookie=5) +
    req(TRIM, 0, 8192, cookie=6) + req(WZ, 8192, 4096, FAST_ZERO, cookie=7) +
    req(WZ, 100, 5000, NO_HOLE | FUA, cookie=8) + req(CACHE, 0, 65536, 0, 9) +
    req(READ, 0, 1 << 20, cookie=10) + req(READ, 0, 65536, DF, 11) +
    req(WRITE, 4096, 3, data=b"EIO") + req(DISC),
    "readonly": b"\x01" + req(WRITE, 0, 4, data=b"abcd") +
    req(TRIM, 0, 4096, cookie=2) + req(READ, 0, 512, cookie=3) +
    req(WZ, 0, 512, cookie=4) + req(FLUSH, cookie=5),
    "small-split": b"\x02" + req(WRITE, 0, 12288, data=bytes(12288)) +
    req(READ, 512, 12288, cookie=2) + req(READ, 1, 511, cookie=3) +
    req(WRITE, 13312, 512, cookie=4, data=bytes(512)) +
    req(BS, 0, 13312, cookie=5) + req(CACHE, 0, 13312, cookie=6),
    "emulated": b"\x03" + req(WRITE, 0, 4096, FUA, data=data4k) +
    req(WZ, 0, 8192, cookie=2) + req(WZ, 0, 8192, FAST_ZERO, cookie=3) +
    req(CACHE, 0, 1 << 20, cookie=4) + req(BS, 0, 4096, cookie=5) +
    req(TRIM, 0, 4096, cookie=6),
    "simple-replies": b"\x04" + req(READ, 0, 4096) + req(BS, 0, 4096, 0, 2) +
    req(READ, 0, 4096, DF, 3) + req(9, 0, 1, 0, 4) + req(READ, 1 << 20, 1, 0, 5) +
    req(WRITE, (1 << 20) - 1, 2, 0, 6, b"xy") + req(READ, 0, 0, 0, 7) +
    req(READ, 0, 1, 0x80, 8),
    "bad-magic": b"\x00" + req(READ, 0, 512) + b"\xde\xad\xbe\xef" * 7,
}


def patch(off, data):
    return struct.pack("<I", off)[:3] + bytes([len(data)]) + data


casstore = {
    # superblock: a newer version, CRC fixed: "version 2 not supported"
    "super-version": bytes([0, 1]) + patch(8, struct.pack("<I", 2)),
    # superblock: block size not a power of two, CRC fixed
    "super-blocksize": bytes([0, 1]) + patch(12, struct.pack("<I", 12345)),
    # pack: a byte of the first record's payload flipped (CRC caught)
    "pack-payload": bytes([1, 0]) + patch(64 + 64 + 10, b"\xff"),
    # pack: a record length made huge, CRCs fixed
    "pack-length": bytes([1, 1]) + patch(64 + 8, struct.pack("<I", 1 << 20)),
    # pack: payload changed and CRCs and SHA fixed: references dangle
    "pack-rehash": bytes([1, 17]) + patch(64 + 64, b"hello"),
    # index: entry count larger than the file, CRCs fixed.  (With 2^60
    # it crashed cas_index_load: regressions/casstore/index-count-huge-calloc.)
    "index-count": bytes([2, 1]) + patch(24, struct.pack("<Q", 1000)),
    # index: high-water mark beyond the pack, CRCs fixed
    "index-mark": bytes([2, 1]) + patch(16, struct.pack("<Q", 1 << 40)),
    # root a: size 2^50, CRC fixed
    "root-size": bytes([3, 9]) + patch(16, struct.pack("<Q", 1 << 50)),
    # root b: depth 7, CRC fixed
    "root-depth": bytes([4, 1]) + patch(36, struct.pack("<I", 7)),
    # crafted map node for volume a: known hashes, depth 1
    "crafted-a": bytes([5, 8, 0, 1]) + struct.pack("<Q", 0) +
    bytes(range(1, 40)),
    # crafted map node for volume b: depth 2, children are known chunks
    # (data blocks read as map nodes), a raw hash, zeros
    "crafted-b": bytes([5, 4, 1, 2]) + struct.pack("<Q", 0) +
    bytes([1, 2, 0, 0x80]) + b"\x11" * 32 + bytes([3]),
    # truncate the pack in the middle of a record
    "truncate-pack": bytes([6, 0, 1]) + struct.pack("<I", 64 + 64 + 100)[:3],
}

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "corpus")
for sub, seeds in (("handshake", handshake), ("requests", requests),
                   ("casstore", casstore)):
    d = os.path.join(out, sub)
    os.makedirs(d, exist_ok=True)
    for k, v in seeds.items():
        with open(os.path.join(d, k), "wb") as f:
            f.write(v)
print("seeds written to", out)
