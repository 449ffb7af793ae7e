#!/usr/bin/python3
# A tiny "store" for the simulator's self-test (test-powerloss-selftest.py):
# it commits a value to DIR/db N times and says "ack I" on stdout after
# each commit, then waits for a line on stdin before the next one (so
# the test can note the recorder log's size at each acknowledgement).
#
#   fakestore.py MODE DIR N
#
# MODE says how a commit is made:
#   good        write .db.tmp, fsync it, rename over db, fsync DIR
#   rename-first write .db.tmp, rename over db, fsync DIR, then fsync the
#               file: a power cut in between leaves db empty or torn
#   no-dirsync  write .db.tmp, fsync it, rename: the rename is not
#               durable when the commit is acknowledged
#   mmap        good, but the data goes in through mmap, which the
#               recorder cannot see: its completeness check must notice
import mmap
import os
import sys


def value(i):
    """Commit i's contents: 1664 bytes (parts of 4 sectors), so that a
    torn write shows."""
    return (b"commit %06d\n" % i) * 128


def main():
    mode, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tmp = os.path.join(d, ".db.tmp")
    db = os.path.join(d, "db")
    for i in range(1, n + 1):
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        data = value(i)
        if mode == "mmap":
            os.ftruncate(fd, len(data))
            with mmap.mmap(fd, len(data)) as m:
                m[:] = data
        else:
            os.write(fd, data)
        if mode == "rename-first":
            os.rename(tmp, db)
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
            os.fsync(fd)
            os.close(fd)
        else:
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, db)
            if mode != "no-dirsync":
                dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(dfd)
                os.close(dfd)
        sys.stdout.write("ack %d\n" % i)
        sys.stdout.flush()
        sys.stdin.readline()


if __name__ == "__main__":
    main()
