#!/usr/bin/python3
# libnbd with strict mode off sends what a well-behaved client never
# would: out-of-range, zero-length, unknown-flag and unadvertised
# requests.  minnbd must answer with the spec's errors and keep the
# connection usable; nbdkit (the reference) runs the same requests and
# must agree wherever nbdkit 1.32 follows the spec (INTEROP.md's table).

import os

import nbd
import nbdtest

SIZE = 128 * 1024 * 1024
MiB = 1024 * 1024

# (description, function(h) -> None, expected errno or None for success,
#  servers the expectation applies to)
BOTH = ("minnbd", "nbdkit")
MINNBD = ("minnbd",)


def cases_rw():
    return [
        ("read past EOF", lambda h: h.pread(1024, SIZE - 512), "EINVAL",
         BOTH),
        ("read starting past EOF", lambda h: h.pread(512, SIZE + 4096),
         "EINVAL", BOTH),
        ("write past EOF", lambda h: h.pwrite(b"x" * 1024, SIZE - 512),
         "ENOSPC", BOTH),
        ("trim past EOF", lambda h: h.trim(1024, SIZE - 512), "EINVAL",
         BOTH),
        ("write_zeroes past EOF", lambda h: h.zero(1024, SIZE - 512),
         "ENOSPC", BOTH),
        ("cache past EOF", lambda h: h.cache(1024, SIZE - 512), "EINVAL",
         MINNBD),
        ("block status past EOF",
         lambda h: h.block_status(1024, SIZE - 512, lambda *a: 0),
         "EINVAL", MINNBD),
        ("offset near 2^64", lambda h: h.pread(4096, (1 << 64) - 2048),
         "EINVAL", BOTH),
        ("read of length 0", lambda h: h.pread(0, 0), "EINVAL", BOTH),
        # nbdkit 1.32 answers ENOSPC here (it treats 0 as out of range).
        ("write of length 0", lambda h: h.pwrite(b"", 0), "EINVAL", MINNBD),
        ("trim of length 0", lambda h: h.trim(0, 0), "EINVAL", MINNBD),
        ("zero of length 0", lambda h: h.zero(0, 0), "EINVAL", MINNBD),
        ("unknown flag bit 14 on read",
         lambda h: h.pread(512, 0, 1 << 14), "EINVAL", BOTH),
        ("unknown flag bit 7 on write",
         lambda h: h.pwrite(b"x" * 512, 0, 1 << 7), "EINVAL", BOTH),
        ("REQ_ONE on read",
         lambda h: h.pread(512, 0, nbd.CMD_FLAG_REQ_ONE), "EINVAL",
         MINNBD),
        ("DF on write",
         lambda h: h.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_DF), "EINVAL",
         MINNBD),
        ("NO_HOLE on trim",
         lambda h: h.trim(512, 0, nbd.CMD_FLAG_NO_HOLE), "EINVAL", MINNBD),
        ("FAST_ZERO on write",
         lambda h: h.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_FAST_ZERO),
         "EINVAL", MINNBD),
        ("read of 33 MiB (over the 32 MiB interop limit)",
         lambda h: h.pread(33 * MiB, 0), None, BOTH),
        # Reads over the maximum: libnbd refuses them client-side even
        # with strict mode off (ERANGE); test-minnbd-raw.py sends them.
        ("FUA on read (FUA advertised: accepted)",
         lambda h: h.pread(512, 0, nbd.CMD_FLAG_FUA), None, BOTH),
        ("FUA on flush", lambda h: h.flush(nbd.CMD_FLAG_FUA), None, BOTH),
        ("write at the last byte", lambda h: h.pwrite(b"z", SIZE - 1),
         None, BOTH),
    ]


def cases_ro():
    return [
        ("write on a read-only export", lambda h: h.pwrite(b"x" * 512, 0),
         "EPERM", BOTH),
        ("trim on a read-only export", lambda h: h.trim(512, 0), "EPERM",
         BOTH),
        ("write_zeroes on a read-only export", lambda h: h.zero(512, 0),
         "EPERM", BOTH),
        ("write past EOF on a read-only export",
         lambda h: h.pwrite(b"x" * 512, SIZE), "EPERM", MINNBD),
        ("FUA on read of a read-only export (not advertised)",
         lambda h: h.pread(512, 0, nbd.CMD_FLAG_FUA), "EINVAL", MINNBD),
    ]


def run_cases(srv, h, cases):
    failures = []
    for desc, fn, want, who in cases:
        if srv.server not in who:
            continue
        try:
            if want is None:
                fn(h)
            else:
                nbdtest.expect_error(want, fn, h)
        except Exception as e:
            failures.append("%s: %s" % (desc, e))
        # Every error leaves the connection usable.
        try:
            assert len(h.pread(512, 0)) == 512
        except Exception as e:
            failures.append("%s: connection unusable afterwards: %s" %
                            (desc, e))
            return failures
    return failures


def body_rw(srv):
    h = srv.connect(strict_mode=0)
    f = run_cases(srv, h, cases_rw())
    # Unadvertised: block status without a negotiated meta context.
    h2 = nbd.NBD()
    h2.set_strict_mode(0)
    h2.connect_unix(srv.sock)
    if srv.server == "minnbd":
        try:
            nbdtest.expect_error("EINVAL", h2.block_status, 512, 0,
                                 lambda *a: 0)
        except AssertionError as e:
            # libnbd may refuse client-side; then nothing was sent.
            if "succeeded" in str(e):
                f.append("block status without meta context: %s" % e)
    h2.shutdown()
    h.shutdown()
    assert not f, "\n".join(f)


def body(srv):
    body_rw(srv)
    # The same backend read-only (-r), with srv stopped meanwhile: a store
    # may allow one server at a time.
    d = os.path.join(srv.workdir, "ro")
    os.makedirs(d, exist_ok=True)
    srv.stop()
    ro = nbdtest.Server(srv.server, srv.backend, srv.params, d,
                        readonly=True).start()
    try:
        h = ro.connect(strict_mode=0)
        assert h.is_read_only()
        f = run_cases(ro, h, cases_ro())
        h.shutdown()
    finally:
        rc = ro.stop()
        srv.start()
        # Be sure it runs before the harness stops it again.
        srv.connect().shutdown()
    assert not f, "\n".join(f)
    assert rc == 0 or srv.server == "nbdkit", \
        "read-only server exited with %s:\n%s" % (rc, ro.log())


nbdtest.run("strict mode off", body, size=SIZE)
