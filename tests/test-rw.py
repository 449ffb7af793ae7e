#!/usr/bin/python3
# Read/write round trips against a model of the disk: odd offsets and
# lengths, block-straddling writes, the first and last byte, FUA writes,
# flush, DF reads, big requests; a second connection sees it all.

import nbd
import nbdtest

SIZE = 64 * 1024 * 1024
MiB = 1024 * 1024


def check(h, model, off, n, what):
    got = h.pread(n, off)
    want = bytes(model[off:off + n])
    if got != want:
        i = next(i for i in range(n) if got[i] != want[i])
        raise AssertionError("%s: read %d@%d differs at byte %d: got %r "
                             "want %r" % (what, n, off, off + i,
                                          got[i:i + 8], want[i:i + 8]))


def body(srv):
    h = srv.connect()
    model = bytearray(SIZE)
    seed = [0]

    def write(off, n, flags=0):
        seed[0] += 1
        data = nbdtest.random_bytes(n, seed[0])
        h.pwrite(data, off, flags)
        model[off:off + n] = data

    # A fresh disk reads as zeros.
    check(h, model, 0, MiB, "fresh disk start")
    check(h, model, SIZE - MiB, MiB, "fresh disk end")

    # Odd offsets and lengths, small and across block boundaries (cas
    # blocks are 4 KiB..1 MiB: these straddle all of them).
    cases = [(0, 1), (1, 1), (3, 7), (511, 2), (4095, 3), (4097, 4093),
             (65535, 131073), (MiB - 1, 2), (MiB - 7, 3 * MiB + 13),
             (5 * MiB + 12345, 777), (7 * MiB - 333, 2 * MiB + 999),
             (SIZE - 1, 1), (SIZE - 4097, 4097), (SIZE - 3 * MiB - 5, 77),
             (0, 65536), (12 * MiB, 4 * MiB)]
    for off, n in cases:
        write(off, n)
        check(h, model, off, n, "after write %d@%d" % (n, off))
        # Neighbours are untouched.
        lo = max(0, off - 4096)
        hi = min(SIZE, off + n + 4096)
        check(h, model, lo, hi - lo, "around write %d@%d" % (n, off))

    # Overwrite partially overlapping earlier writes.
    for off, n in [(2, 5), (4090, 20), (MiB - 3, 6), (SIZE - 2, 2)]:
        write(off, n)
    # The last byte, alone.
    write(SIZE - 1, 1)
    check(h, model, SIZE - 1, 1, "last byte")
    check(h, model, SIZE - 8192, 8192, "last 8 KiB")

    # FUA writes (flag honoured or emulated) and flush.
    assert h.can_fua()
    write(20 * MiB + 3, 100000, nbd.CMD_FLAG_FUA)
    write(SIZE - 65536, 65536, nbd.CMD_FLAG_FUA)
    check(h, model, 20 * MiB, MiB, "after FUA write")
    h.flush()

    # Big requests: 8 MiB write, 16 MiB read, DF read (one chunk).
    write(30 * MiB + 1, 8 * MiB)
    check(h, model, 29 * MiB, 16 * MiB, "big read")
    buf = h.pread_structured(MiB, 30 * MiB, lambda *a: 0, nbd.CMD_FLAG_DF)
    assert buf == bytes(model[30 * MiB:31 * MiB]), "DF read differs"
    # Reads of data and holes in one request (structured reply chunks).
    check(h, model, 0, 32 * MiB, "32 MiB span")
    h.flush()

    # Pipelined: many aio writes in flight, then aio reads.
    cookies = []
    bufs = []
    for i in range(64):
        off = 50 * MiB + i * 65536 + (i % 7)
        seed[0] += 1
        data = nbdtest.random_bytes(4096 + 13 * i, seed[0])
        model[off:off + len(data)] = data
        b = nbd.Buffer.from_bytearray(data)
        bufs.append(b)
        cookies.append(h.aio_pwrite(b, off))
    nbdtest.aio_wait(h, cookies)
    check(h, model, 50 * MiB, 5 * MiB, "after pipelined writes")

    # A second connection sees everything (while the first is open), and
    # so does a fresh one after the first closes.
    h2 = srv.connect()
    check(h2, model, 0, SIZE // 2, "first half from a second connection")
    h2.shutdown()
    h.shutdown()
    h3 = srv.connect()
    check(h3, model, SIZE // 2, SIZE // 2, "second half after reconnect")
    h3.shutdown()


nbdtest.run("read/write round trips", body, size=SIZE)
