"""Shared by space.py and sim.py: chunk lists of the corpus images (from
space-chunker, cached in WORK/chunks) and block compressors (liblz4 and
libzstd through ctypes: Debian's runtime libraries, no -dev packages).
"""

import ctypes
import ctypes.util
import json
import os
import struct
import subprocess

KiB = 1024
MiB = 1024 * 1024
RECORD = struct.Struct("<QII32s")     # space-chunker's output record


def load_corpus(work):
    with open(os.path.join(work, "corpus.json")) as f:
        return json.load(f)


def image_path(work, name):
    return os.path.join(work, "img", name + ".img")


def chunks(work, chunker, name, mode, size):
    """[(offset, length, hash or None for all-zero)] of image name, cut by
    space-chunker MODE SIZE; cached next to the images (the cache is
    remade when the image is newer).
    """
    img = image_path(work, name)
    cdir = os.path.join(work, "chunks")
    os.makedirs(cdir, exist_ok=True)
    cache = os.path.join(cdir, "%s.%s%d" % (name, mode, size))
    if (not os.path.exists(cache)
            or os.path.getmtime(cache) < os.path.getmtime(img)):
        with open(cache + ".tmp", "wb") as out:
            subprocess.run([chunker, mode, str(size), img], stdout=out,
                           check=True)
        os.rename(cache + ".tmp", cache)
    with open(cache, "rb") as f:
        data = f.read()
    out = []
    for off, length, flags, h in RECORD.iter_unpack(data):
        out.append((off, length, None if flags & 1 else h))
    return out


_open_files = {}


def read_at(path, off, length):
    f = _open_files.get(path)
    if f is None:
        f = _open_files[path] = open(path, "rb")
    f.seek(off)
    return f.read(length).ljust(length, b"\0")


class Codecs:
    """compress(name, data) -> bytes the compressed block takes.

    Names: lz4 (LZ4_compress_default, the block format: no frame),
    lz4hc:L, zstd:L (ZSTD_compressCCtx: a zstd frame without checksum,
    as a store would keep it).
    """

    def __init__(self):
        self.lz4 = ctypes.CDLL(ctypes.util.find_library("lz4") or "liblz4.so.1")
        self.zstd = ctypes.CDLL(ctypes.util.find_library("zstd") or "libzstd.so.1")
        self.lz4.LZ4_compress_default.restype = ctypes.c_int
        self.lz4.LZ4_compress_default.argtypes = [
            ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        self.lz4.LZ4_compress_HC.restype = ctypes.c_int
        self.lz4.LZ4_compress_HC.argtypes = [
            ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
            ctypes.c_int]
        self.zstd.ZSTD_createCCtx.restype = ctypes.c_void_p
        self.zstd.ZSTD_compressCCtx.restype = ctypes.c_size_t
        self.zstd.ZSTD_compressCCtx.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
        self.zstd.ZSTD_isError.restype = ctypes.c_uint
        self.zstd.ZSTD_isError.argtypes = [ctypes.c_size_t]
        self.cctx = self.zstd.ZSTD_createCCtx()
        self.cap = 2 * MiB
        self.dst = ctypes.create_string_buffer(self.cap)

    def compress(self, name, data):
        algo, _, level = name.partition(":")
        n = len(data)
        if algo == "lz4":
            r = self.lz4.LZ4_compress_default(data, self.dst, n, self.cap)
        elif algo == "lz4hc":
            r = self.lz4.LZ4_compress_HC(data, self.dst, n, self.cap,
                                         int(level or 9))
        elif algo == "zstd":
            r = self.zstd.ZSTD_compressCCtx(self.cctx, self.dst, self.cap,
                                            data, n, int(level or 3))
            if self.zstd.ZSTD_isError(r):
                raise RuntimeError("ZSTD_compressCCtx failed")
        else:
            raise ValueError("codec %r: lz4, lz4hc:L or zstd:L" % name)
        if r <= 0:
            raise RuntimeError("%s failed on %d bytes" % (name, n))
        return r


def kept(n, csize):
    """Bytes a chunk of n bytes takes under the 1/8 rule: stored
    compressed only if that saves at least n/8.
    """
    return csize if csize <= n - n // 8 else n


def fmt_mib(n):
    return "%.1f" % (n / MiB)
