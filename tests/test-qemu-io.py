#!/usr/bin/python3
# qemu-io battery (qemu's NBD client): writes with and without FUA
# (cache=writethrough / writeback), aio writes in flight together,
# aio_flush, `write -z` and `write -z -u` (WRITE_ZEROES with and without
# NO_HOLE), discard (TRIM), flush, vectored and unaligned I/O, the last
# sector; patterns re-read by a second, read-only qemu-io; a read past
# the end fails.

import nbdtest

SIZE = 64 * 1024 * 1024
MiB = 1024 * 1024
V = 40 * MiB + 3      # vectored, unaligned
U = 41 * MiB + 12345  # unaligned


def qemu_io(uri, cmds, extra=(), check=True):
    argv = ["qemu-io", "-f", "raw"] + list(extra)
    for c in cmds:
        argv += ["-c", c]
    p = nbdtest.cmd(argv + [uri], check=check)
    if check:
        assert "failed" not in p.stdout + p.stderr, \
            "qemu-io reported a failure:\n%s%s" % (p.stdout, p.stderr)
    return p


def body(srv):
    uri = srv.uri()
    last = SIZE - 512
    # Default cache mode writethrough: every write carries FUA.
    qemu_io(uri, [
        "write -P 0x55 0 1M", "read -P 0x55 0 1M",
        "write -f -P 0x66 1M 64k", "read -P 0x66 1M 64k",
        "write -P 0x11 2M 1M", "write -z 2M 1M", "read -P 0 2M 1M",
        "write -P 0x12 4M 4M", "write -z -u 4M 4M", "read -P 0 4M 4M",
        "write -P 0x13 8M 2M", "discard 8M 1M", "read -P 0 8M 1M",
        "read -P 0x13 9M 1M",
        "aio_write -P 0x77 16M 4M", "aio_write -P 0x78 20M 1M",
        "aio_write -P 0x79 21M 64k", "aio_write -P 0x7a 23M 3M",
        "aio_flush",
        "read -P 0x77 16M 4M", "read -P 0x78 20M 1M",
        "read -P 0x79 21M 64k", "read -P 0x7a 23M 3M",
        "writev -P 0x33 %d 100 200 4096" % V, "readv -P 0x33 %d 4396" % V,
        "write -P 0x44 %d 6789" % U, "read -P 0x44 %d 6789" % U,
        "write -P 0x99 %d 512" % last, "read -P 0x99 %d 512" % last,
        "flush",
    ])
    # Writeback cache: plain writes, explicit flushes, zero / discard of
    # unaligned ranges in between.
    qemu_io(uri, [
        "aio_write -P 0xa1 30M 1M", "aio_write -P 0xa2 31M 1M",
        "aio_write -P 0xa3 32M 1M", "aio_flush",
        "write -z -u 30M 512k", "read -P 0 30M 512k",
        "read -P 0xa1 30.5M 512k",
        "write -z %d 1000" % (31 * MiB + 100),
        "read -P 0 %d 1000" % (31 * MiB + 100),
        "read -P 0xa2 31M 100",
        "discard 32M 64k", "read -P 0xa3 %d 960k" % (32 * MiB + 65536),
        "flush",
    ], extra=["--cache=writeback"])

    # A second client, read-only, sees it all.
    qemu_io(uri, [
        "read -P 0x55 0 1M", "read -P 0x66 1M 64k", "read -P 0 2M 1M",
        "read -P 0 4M 4M", "read -P 0 8M 1M", "read -P 0x13 9M 1M",
        "read -P 0x77 16M 4M", "read -P 0x7a 23M 3M",
        "read -P 0x33 %d 4396" % V, "read -P 0x44 %d 6789" % U,
        "read -P 0x99 %d 512" % last, "read -P 0xa1 30.5M 512k",
        "read -P 0 %d 1000" % (31 * MiB + 100),
        "read -P 0xa3 %d 960k" % (32 * MiB + 65536),
    ], extra=["-r"])

    # Reading past the end fails (qemu clamps; the tail is an error).
    p = qemu_io(uri, ["read %d 1024" % last], check=False)
    assert p.returncode != 0 or "failed" in p.stdout + p.stderr, \
        "read past the end succeeded:\n" + p.stdout


nbdtest.require_tool("qemu-io")
nbdtest.run("qemu-io battery", body, size=SIZE)
