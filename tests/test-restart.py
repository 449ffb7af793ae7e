#!/usr/bin/python3
# Data survives a server restart: flushed writes, FUA writes, zeroed and
# trimmed ranges, and unflushed writes of a client that disconnected
# cleanly before a clean shutdown (SIGTERM); several restarts in a row.

import nbd
import nbdtest

SIZE = 64 * 1024 * 1024
MiB = 1024 * 1024


def body(srv):
    model = bytearray(SIZE)
    h = srv.connect()
    a = nbdtest.random_bytes(3 * MiB + 17, 1)
    h.pwrite(a, MiB - 5)
    model[MiB - 5:MiB - 5 + len(a)] = a
    b = nbdtest.random_bytes(65536, 2)
    h.pwrite(b, SIZE - 65536)
    model[SIZE - 65536:] = b
    h.flush()
    c = nbdtest.random_bytes(12345, 3)
    h.pwrite(c, 10 * MiB + 1, nbd.CMD_FLAG_FUA)
    model[10 * MiB + 1:10 * MiB + 1 + len(c)] = c
    h.zero(MiB, 2 * MiB)
    model[2 * MiB:3 * MiB] = bytes(MiB)
    h.trim(5, SIZE - 100)
    model[SIZE - 100:SIZE - 95] = bytes(5)
    h.flush()
    # Written but never flushed; the client leaves with NBD_CMD_DISC.
    d = nbdtest.random_bytes(MiB, 4)
    h.pwrite(d, 20 * MiB)
    model[20 * MiB:21 * MiB] = d
    h.shutdown()

    def verify(what):
        h = srv.connect()
        assert h.get_size() == SIZE, "%s: size %d" % (what, h.get_size())
        for off in range(0, SIZE, 8 * MiB):
            got = h.pread(8 * MiB, off)
            if got != model[off:off + 8 * MiB]:
                i = next(i for i in range(8 * MiB)
                         if got[i] != model[off + i])
                raise AssertionError("%s: differs at byte %d" %
                                     (what, off + i))
        return h

    srv.restart()
    h = verify("after restart")
    # Change things after a restart, restart again.
    e = nbdtest.random_bytes(777, 5)
    h.pwrite(e, 2 * MiB + 100)
    model[2 * MiB + 100:2 * MiB + 877] = e
    h.flush()
    h.shutdown()
    srv.restart()
    h = verify("after second restart")
    h.shutdown()
    srv.restart()
    verify("after third restart").shutdown()


nbdtest.run("data survives a server restart", body, size=SIZE)
