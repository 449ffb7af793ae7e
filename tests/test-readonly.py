#!/usr/bin/python3
# Read-only export (-r): advertised read-only, data readable, every
# write-type command refused with EPERM by the server (libnbd's strict
# mode off so the request reaches it), connection still usable, data
# unchanged; qemu-io refuses too.

import errno
import os

import nbd
import nbdtest

SIZE = 16 * 1024 * 1024


def body(srv):
    # Put known data on the disk with a writable server first.
    srv.stop()
    srv.readonly = False
    srv.start()
    h = srv.connect()
    pattern = nbdtest.random_bytes(1024 * 1024, 42)
    h.pwrite(pattern, 4096)
    h.flush()
    h.shutdown()
    srv.stop()
    srv.readonly = True
    srv.start()

    h = srv.connect()
    assert h.is_read_only(), "-r export not advertised read-only"
    assert h.get_size() == SIZE
    assert h.pread(len(pattern), 4096) == pattern
    # libnbd itself refuses (strict mode) ...
    nbdtest.expect_error("EPERM", h.pwrite, b"x", 0)
    # ... and so does the server when asked anyway.
    h.set_strict_mode(0)
    nbdtest.expect_error("EPERM", h.pwrite, b"x" * 512, 0)
    nbdtest.expect_error("EPERM", h.pwrite, b"x" * 512, 4096,
                         nbd.CMD_FLAG_FUA)
    nbdtest.expect_error("EPERM", h.zero, 65536, 0)
    nbdtest.expect_error("EPERM", h.zero, 4096, 4096, nbd.CMD_FLAG_NO_HOLE)
    nbdtest.expect_error("EPERM", h.trim, 65536, 0)
    # Still serving this client.
    assert h.pread(len(pattern), 4096) == pattern
    try:
        h.flush()  # allowed (a no-op) or refused; never fatal
    except nbd.Error as e:
        assert e.errnum in (errno.EPERM, errno.EINVAL), e
    assert h.pread(len(pattern), 4096) == pattern
    h.shutdown()

    # qemu-io, a real client, refuses to write to it.
    p = nbdtest.cmd(["qemu-io", "-f", "raw", "-c", "write 0 512", srv.uri()],
                    check=False)
    assert p.returncode != 0, "qemu-io wrote to a read-only export"
    p = nbdtest.cmd(["qemu-io", "-f", "raw", "-r", "-c",
                     "read -P 0 0 4096", "-c", "read -P 0 %d 4096" %
                     (SIZE - 4096), srv.uri()])
    assert "Pattern verification failed" not in p.stdout, p.stdout

    # The data is exactly as before.
    h = srv.connect()
    assert h.pread(len(pattern), 4096) == pattern
    assert h.pread(4096, 0) == bytes(4096)
    h.shutdown()
    if srv.backend == "flatfile":
        path = srv.params[0][len("file="):]
        with open(path, "rb") as f:
            f.seek(4096)
            assert f.read(len(pattern)) == pattern


nbdtest.require_tool("qemu-io")
nbdtest.run("read-only export refuses writes", body, size=SIZE,
            readonly=True)
