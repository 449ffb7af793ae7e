#!/usr/bin/python3
# A real filesystem over the export without nbd.ko: nbdfuse exposes it as
# a file; write/read it through the kernel page cache, mkfs.ext4 it,
# e2fsck -fn, put a file in with debugfs and read it back; after
# unmounting, the filesystem copied out with nbdcopy (and again after a
# server restart) is still clean.  Skipped where FUSE cannot be used.

import os
import shutil
import subprocess

import nbdtest

SIZE = 64 * 1024 * 1024
MiB = 1024 * 1024


class Fuse:
    def __init__(self, uri, mnt):
        self.mnt = mnt
        self.pidfile = os.path.join(os.path.dirname(mnt), "fuse.pid")
        self.log = os.path.join(os.path.dirname(mnt), "fuse.log")
        os.makedirs(mnt, exist_ok=True)
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            ["nbdfuse", "-P", self.pidfile, os.path.join(mnt, "disk"), uri],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
            env=nbdtest.tool_env())
        self.mounted = False
        # nbdfuse writes the pidfile when it is ready to serve.
        nbdtest.wait_until(
            lambda: self.proc.poll() is not None or
            (os.path.exists(self.pidfile) and os.path.getsize(self.pidfile)),
            "nbdfuse to be ready")
        if self.proc.poll() is not None:
            raise AssertionError("nbdfuse exited with %d: %s" % (
                self.proc.returncode, self.output()))
        self.mounted = True
        self.disk = os.path.join(mnt, "disk")

    def output(self):
        self.logf.flush()
        with open(self.log, errors="replace") as f:
            return f.read()

    def close(self):
        if self.mounted:
            self.mounted = False
            if shutil.which("fusermount3", path=nbdtest.SYSTEM_PATH):
                nbdtest.cmd(["fusermount3", "-u", self.mnt], check=False)
            else:
                nbdtest.cmd(["umount", self.mnt], check=False)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.logf.close()
        return rc


def fs_check(img):
    p = nbdtest.cmd(["e2fsck", "-fn", img], check=False)
    assert p.returncode == 0, "e2fsck -fn %s: rc %d\n%s%s" % (
        img, p.returncode, p.stdout, p.stderr)


def body(srv):
    d = srv.workdir
    payload = os.path.join(d, "payload")
    with open(payload, "wb") as f:
        f.write(nbdtest.random_bytes(3 * MiB + 123, 1))
    fuse = Fuse(srv.uri(), os.path.join(d, "mnt"))
    try:
        disk = fuse.disk
        assert os.path.getsize(disk) == SIZE, os.path.getsize(disk)
        # Plain file I/O through FUSE (unaligned, then fsync).
        data = nbdtest.random_bytes(4 * MiB + 3, 2)
        fd = os.open(disk, os.O_RDWR)
        try:
            os.pwrite(fd, data, MiB + 1)
            os.fsync(fd)
            assert os.pread(fd, len(data), MiB + 1) == data
        finally:
            os.close(fd)
        h = srv.connect()
        assert h.pread(len(data), MiB + 1) == data, \
            "data written through nbdfuse differs over NBD"
        h.shutdown()

        nbdtest.cmd(["mkfs.ext4", "-q", "-F", disk])
        fs_check(disk)
        nbdtest.cmd(["debugfs", "-w", "-R", "write %s payload" % payload,
                     disk])
        nbdtest.cmd(["debugfs", "-w", "-R", "mkdir dir", disk])
        fs_check(disk)
        out = os.path.join(d, "payload.out")
        nbdtest.cmd(["debugfs", "-R", "dump payload %s" % out, disk])
        nbdtest.cmd(["cmp", payload, out])
        os.unlink(out)
        os.sync()
    finally:
        rc = fuse.close()
    assert rc == 0, "nbdfuse exited with %d: %s" % (rc, fuse.output())

    # The filesystem as the server holds it, now and after a restart.
    for when in ("after unmount", "after restart"):
        if when == "after restart":
            srv.restart()
        img = os.path.join(d, "copy.img")
        nbdtest.cmd(["nbdcopy", srv.uri(), img])
        fs_check(img)
        out = os.path.join(d, "payload.out")
        nbdtest.cmd(["debugfs", "-R", "dump payload %s" % out, img])
        nbdtest.cmd(["cmp", payload, out])
        os.unlink(out)
        os.unlink(img)


class MemoryServer(nbdtest.Server):
    """nbdkit's own memory plugin (not our code), socket-activated."""

    def argv(self):
        return ["nbdkit", "--exit-with-parent", "memory", "1M"]


def fuse_usable():
    """FUSE works here: mount nbdkit's memory plugin with nbdfuse."""
    d = nbdtest.tmpdir()
    srv = MemoryServer("nbdkit", "memory", [], d).start()
    try:
        Fuse(srv.uri(), os.path.join(d, "m")).close()
        return None
    except AssertionError as e:
        return str(e).splitlines()[0]
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


for tool in ("nbdfuse", "mkfs.ext4", "e2fsck", "debugfs",
             "nbdcopy", "nbdkit"):
    nbdtest.require_tool(tool)
if not os.path.exists("/dev/fuse"):
    nbdtest.skip_all("/dev/fuse is missing")
why = fuse_usable()
if why:
    nbdtest.skip_all("FUSE is not usable here: " + why)
nbdtest.run("nbdfuse + mkfs.ext4 + e2fsck", body, size=SIZE)
