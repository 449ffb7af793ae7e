#!/usr/bin/python3
# Several clients at once: 4 threads, each with its own connection and
# up to 32 pipelined aio requests in flight, write disjoint regions
# (odd sizes, FUA on some), zero / trim parts of them and flush; every
# connection then reads the whole disk back and agrees with the model.

import threading

import nbd
import nbdtest

SIZE = 64 * 1024 * 1024
MiB = 1024 * 1024
CLIENTS = 4
REGION = SIZE // CLIENTS
DEPTH = 32


def client(srv, i, model, errors):
    try:
        h = srv.connect()
        base = i * REGION
        pending = []
        bufs = []
        off = base
        n = 0
        # Sequential-ish writes of varying odd sizes filling the region.
        while off < base + REGION:
            ln = min(4096 * (1 + n % 17) + (n * 7919) % 4096, base + REGION - off)
            data = nbdtest.random_bytes(ln, i * 100000 + n)
            model[off:off + ln] = data
            b = nbd.Buffer.from_bytearray(data)
            bufs.append(b)
            flags = nbd.CMD_FLAG_FUA if n % 9 == 0 else 0
            pending.append(h.aio_pwrite(b, off, flags=flags))
            off += ln
            n += 1
            if len(pending) >= DEPTH:
                nbdtest.aio_wait(h, pending[:DEPTH // 2])
                del pending[:DEPTH // 2]
        nbdtest.aio_wait(h, pending)
        # Zero and trim some ranges of our own region, in flight together.
        ops = []
        for k in range(8):
            off = base + k * (REGION // 8) + 1000 * k + 1
            ln = 65536 + 4096 * k + k
            model[off:off + ln] = bytes(ln)
            if k % 2:
                ops.append(h.aio_zero(ln, off))
            else:
                ops.append(h.aio_trim(ln, off))
        nbdtest.aio_wait(h, ops)
        nbdtest.aio_wait(h, [h.aio_flush()])
        # Reads of our region, pipelined.
        reads = []
        for k in range(0, REGION, MiB):
            b = nbd.Buffer(MiB)
            reads.append((base + k, b, h.aio_pread(b, base + k)))
        nbdtest.aio_wait(h, [c for (_, _, c) in reads])
        for (off, b, _) in reads:
            if b.to_bytearray() != model[off:off + MiB]:
                raise AssertionError("client %d: region at %d differs" %
                                     (i, off))
        h.shutdown()
    except BaseException as e:
        errors.append("client %d: %r" % (i, e))


def body(srv):
    model = bytearray(SIZE)
    errors = []
    threads = [threading.Thread(target=client, args=(srv, i, model, errors))
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, "\n".join(errors)

    # A new connection sees the whole disk as the model says.
    h = srv.connect()
    got = b"".join(h.pread(8 * MiB, off) for off in range(0, SIZE, 8 * MiB))
    if got != model:
        i = next(i for i in range(SIZE) if got[i] != model[i])
        raise AssertionError("whole disk differs at byte %d" % i)
    h.shutdown()


nbdtest.run("parallel clients, disjoint regions", body, size=SIZE)
