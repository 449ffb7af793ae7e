#!/usr/bin/env python3
# flatfile read-only, three ways: readonly=true, the server's -r, and a
# file the server may not write (served read-only, as nbdkit's file plugin
# does).  Each: the export says read-only, reads work, every write-type
# request sent anyway (libnbd strict mode off) fails with EPERM, and the
# file is unchanged.

import errno
import os
import shutil
import subprocess
import sys
import traceback

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import nbd  # noqa: E402
import nbdtest  # noqa: E402

M = 1024 * 1024
NOBODY = 65534


class NobodyServer(nbdtest.Server):
    """The server process runs as nobody (setpriv keeps the pid, so socket
    activation still works)."""

    def argv(self):
        return ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                "--clear-groups"] + super().argv()


def nobody_can_run(server):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    exe = os.environ["FLATFILE_PLUGIN"] if server == "nbdkit" \
        else os.environ["MINNBD"]
    return subprocess.run(["setpriv", "--reuid=%d" % NOBODY,
                           "--regid=%d" % NOBODY, "--clear-groups",
                           "test", "-r", exe],
                          stdin=subprocess.DEVNULL).returncode == 0


def check(srv, path, data):
    h = srv.connect(strict_mode=0)
    assert h.is_read_only(), "export is not read-only"
    assert h.get_size() == len(data)
    assert h.pread(M, 0) == data[:M]
    assert h.pread(1, len(data) - 1) == data[-1:]
    for name, call in (("pwrite", lambda: h.pwrite(b"x" * 512, 0)),
                       ("pwrite FUA", lambda: h.pwrite(b"x", 4096,
                                                       nbd.CMD_FLAG_FUA)),
                       ("zero", lambda: h.zero(M, 0)),
                       ("trim", lambda: h.trim(M, 0))):
        try:
            call()
        except nbd.Error as e:
            assert e.errnum == errno.EPERM, "%s: errno %s (%s)" % (
                name, errno.errorcode.get(e.errnum), e.string)
        else:
            raise AssertionError("%s succeeded on a read-only export" % name)
    # Still usable after the refusals.
    assert h.pread(512, 0) == data[:512]
    h.flush()
    h.shutdown()
    with open(path, "rb") as f:
        assert f.read() == data, "the file changed"


def main():
    ps = nbdtest.pairs(backends=["flatfile"])
    ways = ["readonly=true", "server -r", "file not writable"]
    tap = nbdtest.TAP(len(ps) * len(ways))
    for server, backend in ps:
        for way in ways:
            desc = "flatfile read-only: %s [%s+%s]" % (way, server, backend)
            if way == "file not writable" and not nobody_can_run(server):
                tap.skip(desc, "cannot drop root to nobody here")
                continue
            d = nbdtest.tmpdir()
            os.chmod(d, 0o755)
            srv = None
            try:
                path = os.path.join(d, "disk.img")
                data = os.urandom(4 * M)
                with open(path, "wb") as f:
                    f.write(data)
                params = ["file=" + path]
                cls, ro = nbdtest.Server, False
                if way == "readonly=true":
                    params.append("readonly=true")
                elif way == "server -r":
                    ro = True
                else:
                    os.chmod(path, 0o444)
                    cls = NobodyServer
                srv = cls(server, backend, params, d, readonly=ro).start()
                check(srv, path, data)
                rc = srv.stop()
                tap.ok(rc == 0 or server == "nbdkit", desc,
                       "server exited with %s\n%s" % (rc, srv.log()))
            except Exception:
                log = srv.log() if srv else ""
                if srv:
                    srv.kill9()
                tap.ok(False, desc, traceback.format_exc() +
                       "server log:\n" + log)
            finally:
                shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
