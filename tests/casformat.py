# The cas store's on-disk format, as tests need to read, damage and forge
# it (FORMAT.md is the reference): CRC32C, pack records, the index cache.
# Written from the document, not from the C code, so that a test that
# forges a structure checks the code against the document.

import glob
import hashlib
import os
import struct

PACK_HEADER = 64
RECORD_HEADER = 64
RECORD_MAGIC = 0x43455243
DATA, MAPNODE, TABLE = 1, 2, 3      # record types; TABLE: a piece table
F_TABLE = 0x01                      # record header flag: a table precedes
PIECE = 4096


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        t.append(c)
    return t


_TAB = _crc_table()


def crc32c(data, crc=0):
    """CRC32C (Castagnoli), chainable like the C crc32c(crc, buf, len)."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _TAB[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def record_size(length):
    return RECORD_HEADER + (length + 7) // 8 * 8


def packs(store):
    """The pack files of a store, in pack-number order."""
    return sorted(glob.glob(os.path.join(store, "packs", "pack-*.cas")))


def pack_number(path):
    return int(os.path.basename(path)[5:13])


def records(packfile):
    """(offset, type, length, hash) of each record of a pack file, up to
    the first invalid header."""
    with open(packfile, "rb") as f:
        data = f.read()
    off = PACK_HEADER
    while off + RECORD_HEADER <= len(data):
        magic, typ = struct.unpack_from("<IB", data, off)
        if magic != RECORD_MAGIC:
            break
        length, = struct.unpack_from("<I", data, off + 8)
        yield off, typ, length, data[off + 16:off + 48]
        off += record_size(length)


def record_flags(packfile, off):
    """The flags byte of the record header at off."""
    with open(packfile, "rb") as f:
        f.seek(off + 5)
        return f.read(1)[0]


def piece_table(packfile, off):
    """The piece CRCs of the data record at off, from the table record in
    front of it (format version 2), or None if it has none."""
    if not record_flags(packfile, off) & F_TABLE:
        return None
    with open(packfile, "rb") as f:
        f.seek(off + 8)
        length, = struct.unpack("<I", f.read(4))
        n = (length + PIECE - 1) // PIECE
        tsize = record_size(4 * n)
        f.seek(off - tsize)
        hdr = f.read(RECORD_HEADER)
        magic, typ = struct.unpack_from("<IB", hdr)
        assert magic == RECORD_MAGIC and typ == TABLE, "no table record"
        return list(struct.unpack("<%dI" % n, f.read(4 * n)))


def record_header_crc(packfile, off):
    """The header's own CRC (bytes 60..63) of the record at off."""
    with open(packfile, "rb") as f:
        f.seek(off + 60)
        return struct.unpack("<I", f.read(4))[0]


def flip(path, offset, mask=0x5a):
    """Damage one byte."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def store_uuid(store):
    with open(os.path.join(store, "superblock"), "rb") as f:
        return f.read(64)[32:48]


def sha256(data):
    return hashlib.sha256(data).digest()


# ---- the index cache (FORMAT.md "The index cache"), version 2 ----

def write_index(path, uuid, table, entries):
    """table: {pack: (covered, size, last, last_crc)} for packs 1..n (a
    missing pack number: all zeros); entries: [(key8, loc)]."""
    n = max(table) if table else 0
    tab = b""
    for p in range(1, n + 1):
        covered, size, last, last_crc = table.get(p, (0, 0, 0, 0))
        tab += struct.pack("<QQQI4x", covered, size, last, last_crc)
    ent = b"".join(struct.pack("<8sQ", k, loc) for k, loc in entries)
    hdr = b"NBDCASIX" + struct.pack("<IIQII", 2, n, len(entries),
                                     crc32c(ent), crc32c(tab))
    hdr += uuid + bytes(12)
    hdr += struct.pack("<I", crc32c(hdr))
    assert len(hdr) == 64
    with open(path, "wb") as f:
        f.write(hdr + tab + ent)


def write_index_v1(path, hw_pack, hw_off, entries):
    """The version-1 cache of earlier releases: a bare high-water mark."""
    ent = b"".join(struct.pack("<8sQ", k, loc) for k, loc in entries)
    hdr = b"NBDCASIX" + struct.pack("<IIQQI", 1, hw_pack, hw_off,
                                     len(entries), crc32c(ent))
    hdr += bytes(60 - len(hdr))
    hdr += struct.pack("<I", crc32c(hdr))
    with open(path, "wb") as f:
        f.write(hdr + ent)


def loc(pack, off):
    return (pack << 40) | off


def index_entries(store):
    """Entries for every record of every pack, as a fresh cache would list
    them: [(key8, loc)]."""
    out = []
    for p in packs(store):
        for off, typ, length, h in records(p):
            out.append((h[:8], loc(pack_number(p), off)))
    return out
