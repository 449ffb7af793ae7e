#!/usr/bin/python3
# Out-of-range requests get the spec's errors from the server (libnbd's
# strict mode off so they are sent): ENOSPC for writes past the end,
# EINVAL for reads / trims past the end; the connection keeps working
# and nothing past the end or around it changes.

import nbd
import nbdtest

SIZE = 16 * 1024 * 1024


def body(srv):
    h = srv.connect()
    tail = nbdtest.random_bytes(8192, 5)
    h.pwrite(tail, SIZE - 8192)

    # libnbd refuses these itself in strict mode ...
    nbdtest.expect_error("EINVAL", h.pread, 512, SIZE)
    # ... the server must refuse them too.
    h.set_strict_mode(0)
    for (off, n) in [(SIZE, 512), (SIZE - 512, 1024), (SIZE + 4096, 1),
                     (SIZE - 1, 2), (1 << 62, 512), ((1 << 64) - 512, 512)]:
        nbdtest.expect_error("EINVAL", h.pread, n, off)
        nbdtest.expect_error("ENOSPC", h.pwrite, b"\x55" * n, off)
        nbdtest.expect_error("ENOSPC", h.pwrite, b"\x55" * n, off,
                             nbd.CMD_FLAG_FUA)
        nbdtest.expect_error("EINVAL", h.trim, n, off)
        nbdtest.expect_error("ENOSPC", h.zero, n, off)
        if h.can_cache():
            nbdtest.expect_error("EINVAL", h.cache, n, off)
        # The connection still works.
        assert h.pread(8192, SIZE - 8192) == tail, \
            "tail changed after out-of-range request %d@%d" % (n, off)
    # Block status past the end.
    nbdtest.expect_error("EINVAL", h.block_status, 512, SIZE,
                         lambda *a: 0)
    # In range right up to the end is fine.
    h.pwrite(b"\x77" * 512, SIZE - 512)
    assert h.pread(512, SIZE - 512) == b"\x77" * 512
    h.flush()
    h.shutdown()

    # A fresh connection sees the disk unchanged apart from that write.
    h = srv.connect()
    assert h.get_size() == SIZE
    assert h.pread(8192, SIZE - 8192) == tail[:-512] + b"\x77" * 512
    h.shutdown()


nbdtest.run("out-of-range requests", body, size=SIZE)
