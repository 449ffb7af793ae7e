#!/usr/bin/python3
# Power-loss simulator for the stores (issue 10; README.md beside this
# file says how it works and how to add a workload).
#
# 1. record: a workload (workloads.py) drives a real server over NBD
#    while recorder.so, preloaded into it, logs every change to the files
#    under the store's directory (log format: recorder.h).  The client
#    keeps its own log: each write, and for each acknowledged flush/FUA
#    the size of the recorder's log when the reply arrived.
# 2. model: the log is replayed once into a model of names (directories)
#    and inodes (file contents), with every sync's begin and end.
# 3. for each cut point P (the first P log entries happened, none after)
#    a state is built that a power cut at P could leave:
#      - a file holds what was written before its last completed sync;
#        of what was written after it, each 512-byte sector holds any one
#        of the values it had since (so later writes survive in any
#        subset and torn at sector granularity), and the size is any of
#        the sizes it had since;
#      - a create, rename, unlink or mkdir survives if its directory was
#        fsync'ed after it (stricter than ext4, on purpose) and otherwise
#        survives or not at random;
#    the random choices come from a seed printed with any failure, so
#    the state can be rebuilt (`powerloss.py rebuild`).
# 4. each state is checked: `nbdcas fsck --full` passes, the store opens
#    (casread, or a real server for some cut points), and every byte
#    acknowledged by a flush or FUA before the cut reads back as written,
#    every other byte as one of the values it had (never garbage); for
#    cas also the whole volume as of one flush (its root is atomic; per
#    block with requests in flight), every volume and snapshot there or
#    gone as the client's history says, and writing the data again after
#    the crash reads back.
#
# Python: the system python (/usr/bin/python3, for libnbd's bindings).

import bisect
import os
import pickle
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))     # tests/: nbdtest

SECTOR = 512

# ---- the log (recorder.h) ----

PLR_MAGIC = 0x31524c50
HEADER = struct.Struct("=IHHIIiiQQQQIIII")
assert HEADER.size == 72
(OPEN, CLOSE, WRITE, TRUNCATE, FALLOCATE, RENAME, UNLINK, MKDIR, LINK,
 SYNC_BEGIN, SYNC_END, DUP, MKNOD) = range(1, 14)
TYPE_NAMES = {OPEN: "open", CLOSE: "close", WRITE: "write",
              TRUNCATE: "truncate", FALLOCATE: "fallocate",
              RENAME: "rename", UNLINK: "unlink", MKDIR: "mkdir",
              LINK: "link", SYNC_BEGIN: "sync-begin", SYNC_END: "sync-end",
              DUP: "dup", MKNOD: "mknod"}
SYNC_FSYNC, SYNC_FDATASYNC, SYNC_ALL = 1, 2, 3
WRITE_DSYNC = 1

O_ACCMODE, O_RDONLY, O_CREAT, O_TRUNC = 3, 0, 0o100, 0o1000
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
FALLOC_FL_ZERO_RANGE = 0x10
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


class Entry:
    __slots__ = ("type", "pid", "tid", "fd", "err", "seq", "a", "b", "c",
                 "path", "path2", "data", "end")

    def __str__(self):
        s = "%s pid %d fd %d" % (TYPE_NAMES.get(self.type, self.type),
                                 self.pid, self.fd)
        if self.type == WRITE:
            s += " off %d len %d%s" % (self.a, len(self.data),
                                      " dsync" if self.b & WRITE_DSYNC
                                      else "")
        elif self.type == TRUNCATE:
            s += " len %d" % self.a
        elif self.type == FALLOCATE:
            s += " mode %#x off %d len %d" % (self.a, self.b, self.c)
        elif self.type in (SYNC_BEGIN, SYNC_END):
            s += " %s" % {1: "fsync", 2: "fdatasync", 3: "syncfs/sync"}.get(
                self.a, self.a)
            if self.err:
                s += " err %d" % self.err
        s += " " + self.path
        if self.path2:
            s += " -> " + self.path2
        return s


def read_log(path):
    """The entries of a recorder log, each with .end its byte offset."""
    with open(path, "rb") as f:
        buf = f.read()
    out = []
    pos = 0
    while pos < len(buf):
        if len(buf) - pos < HEADER.size:
            raise ValueError("%s: partial entry at %d" % (path, pos))
        (magic, typ, _, pid, tid, fd, err, seq, a, b, c, plen, p2len, dlen,
         _) = HEADER.unpack_from(buf, pos)
        if magic != PLR_MAGIC:
            raise ValueError("%s: bad magic at %d" % (path, pos))
        e = Entry()
        e.type, e.pid, e.tid, e.fd, e.err, e.seq = typ, pid, tid, fd, err, seq
        e.a, e.b, e.c = a, b, c
        p = pos + HEADER.size
        e.path = buf[p:p + plen].decode("utf-8", "surrogateescape")
        p += plen
        e.path2 = buf[p:p + p2len].decode("utf-8", "surrogateescape")
        p += p2len
        e.data = buf[p:p + dlen]
        p += dlen
        pos = (p + 7) & ~7
        e.end = pos
        out.append(e)
    return out


class ModelError(Exception):
    """The log does not fit the model: the recorder missed something, or
    the program did something the simulator does not support."""


# ---- the model: names and inodes ----

class Dir:
    def __init__(self, path):
        self.path = path
        self.syncs = []            # (begin index, end index)


class Socket:
    """A Unix socket's name (bind): no contents; a state holds a fresh
    socket file there if the name survived."""


class Inode:
    _next = 0

    def __init__(self, content=b"", created=-1):
        Inode._next += 1
        self.id = Inode._next
        self.initial = bytes(content)
        self.created = created
        self.ops = []              # (index, op tuple)
        self.syncs = []
        self.current = bytearray(content)


class NsOp:
    """A change to names: ("create"|"mkdir"|"link"|"mknod", path, node),
    ("unlink", path, node), ("rename", old, new, node); renaming a
    directory moves every name under it."""
    __slots__ = ("index", "kind", "args", "dirs")

    def __init__(self, index, kind, args, dirs):
        self.index, self.kind, self.args, self.dirs = index, kind, args, dirs


def parent(path):
    return os.path.dirname(path)


def rename_names(names, a, b, node):
    """Apply rename a -> b of node to a dict of names (a directory takes
    every name under it along)."""
    names[b] = node
    if names.get(a) is node:
        del names[a]
    if isinstance(node, Dir):
        for p in [p for p in names if p.startswith(a + "/")]:
            names[b + p[len(a):]] = names.pop(p)


def apply_data(buf, op):
    """Apply a data op to bytearray buf; return the touched byte range
    (start, end) or None."""
    kind = op[0]
    if kind == "write":
        off, data = op[1], op[2]
        end = off + len(data)
        if len(buf) < off:
            buf.extend(bytes(off - len(buf)))
        buf[off:end] = data
        return (off, end)
    if kind == "truncate":
        n = op[1]
        old = len(buf)
        if n < old:
            del buf[n:]
            return (n, old)
        buf.extend(bytes(n - old))
        return (old, n)
    if kind == "fallocate":
        mode, off, ln = op[1], op[2], op[3]
        end = off + ln
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE |
                    FALLOC_FL_ZERO_RANGE):
            raise ModelError("fallocate mode %#x is not modelled" % mode)
        keep = mode & FALLOC_FL_KEEP_SIZE
        old = len(buf)
        if not keep and end > old:
            buf.extend(bytes(end - old))
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            stop = min(end, len(buf))
            if stop > off:
                buf[off:stop] = bytes(stop - off)
            return (off, max(stop, min(end, old)))
        return (old, len(buf)) if len(buf) > old else None
    raise ModelError("unknown data op %r" % (op,))


class Model:
    """The log replayed: names, inodes, syncs.  root: the recorded
    directory; baseline: a copy of it taken before recording started
    (everything in it is durable)."""

    def __init__(self, root, baseline, entries):
        self.root = root
        self.entries = entries
        self.ends = [e.end for e in entries]
        self.dirs = {}
        self.base_names = {}       # path -> Dir | Inode, durable
        self.ns_ops = []
        self.global_syncs = []
        self.inodes = []
        self._load_baseline(baseline)
        self._replay()
        self._index_syncs()

    def count(self, pos):
        """Entries wholly inside the first pos bytes of the log."""
        return bisect.bisect_right(self.ends, pos)

    def _dir(self, path):
        d = self.dirs.get(path)
        if d is None:
            d = self.dirs[path] = Dir(path)
        return d

    def _load_baseline(self, baseline):
        self.base_names[self.root] = self._dir(self.root)
        for dirpath, dirnames, filenames in os.walk(baseline):
            rel = os.path.relpath(dirpath, baseline)
            dst = self.root if rel == "." else os.path.join(self.root, rel)
            for d in dirnames:
                p = os.path.join(dst, d)
                self.base_names[p] = self._dir(p)
            for fn in filenames:
                with open(os.path.join(dirpath, fn), "rb") as f:
                    ino = Inode(f.read())
                self.inodes.append(ino)
                self.base_names[os.path.join(dst, fn)] = ino

    def _under(self, path):
        return path == self.root or path.startswith(self.root + "/")

    def _replay(self):
        names = dict(self.base_names)
        fds = {}
        begins = {}
        self.names_final = names

        def ns(i, kind, args, dirs):
            for d in dirs:
                if d not in names or not isinstance(names[d], Dir):
                    raise ModelError("entry %d: %s in %s, which is not a "
                                     "directory the log knows" % (i, kind, d))
            self.ns_ops.append(NsOp(i, kind, args,
                                    tuple(names[d] for d in dirs)))

        def data(i, node, op, e):
            if not isinstance(node, Inode):
                raise ModelError("entry %d: %s on a directory" % (i, e))
            node.ops.append((i, op))
            apply_data(node.current, op)

        def by_fd(i, e, fd=None):
            node = fds.get((e.pid, e.fd if fd is None else fd))
            if node is None:
                raise ModelError("entry %d: %s: an fd the log never opened "
                                 "(a call the recorder missed?)" % (i, e))
            # The recorder logs the fd's path as the kernel sees it: the
            # model must agree on which file that is.
            if (fd is None and e.path and not e.path.endswith(" (deleted)")
                    and names.get(e.path) is not node):
                raise ModelError("entry %d: %s: the kernel says the fd is "
                                 "%s, the model disagrees" % (i, e, e.path))
            return node

        for i, e in enumerate(self.entries):
            t = e.type
            if t == OPEN:
                p = e.path
                if not self._under(p):
                    p = e.path2        # opened by a path from outside
                node = names.get(p)
                if node is None:
                    if not e.a & O_CREAT:
                        raise ModelError("entry %d: %s: no such file in the "
                                         "model" % (i, e))
                    node = Inode(created=i)
                    self.inodes.append(node)
                    ns(i, "create", (p, node), [parent(p)])
                    names[p] = node
                elif (e.a & O_TRUNC and isinstance(node, Inode) and
                      e.a & O_ACCMODE != O_RDONLY):
                    data(i, node, ("truncate", 0), e)
                real = e.path2
                if real != p and not real.endswith(" (deleted)"):
                    raise ModelError("entry %d: %s: opened %s, the model "
                                     "says %s" % (i, e, real, p))
                fds[(e.pid, e.fd)] = node
            elif t == CLOSE:
                fds.pop((e.pid, e.fd), None)
            elif t == DUP:
                fds[(e.pid, e.fd)] = by_fd(i, e, fd=e.a)
            elif t == WRITE:
                node = by_fd(i, e)
                op = ("write", e.a, e.data)
                data(i, node, op, e)
                if e.b & WRITE_DSYNC:
                    node.ops[-1] = (i, op + ("dsync",))
            elif t == TRUNCATE:
                node = by_fd(i, e) if e.fd >= 0 else names.get(e.path)
                if node is None:
                    raise ModelError("entry %d: %s: unknown file" % (i, e))
                data(i, node, ("truncate", e.a), e)
            elif t == FALLOCATE:
                data(i, by_fd(i, e), ("fallocate", e.a, e.b, e.c), e)
            elif t == RENAME:
                a, b = e.path, e.path2
                if not (self._under(a) and self._under(b)):
                    raise ModelError("entry %d: %s: a rename into or out of "
                                     "the recorded directory" % (i, e))
                if e.a & RENAME_EXCHANGE:
                    raise ModelError("entry %d: RENAME_EXCHANGE is not "
                                     "modelled" % i)
                node = names.get(a)
                if node is None:
                    raise ModelError("entry %d: %s: no such name" % (i, e))
                if names.get(b) is node:
                    continue
                ns(i, "rename", (a, b, node), [parent(a), parent(b)])
                rename_names(names, a, b, node)
            elif t == UNLINK:
                node = names.pop(e.path, None)
                if node is None:
                    raise ModelError("entry %d: %s: no such name" % (i, e))
                ns(i, "unlink", (e.path, node), [parent(e.path)])
            elif t == MKDIR:
                node = Dir(e.path)
                self.dirs[e.path + "#%d" % i] = node
                ns(i, "mkdir", (e.path, node), [parent(e.path)])
                names[e.path] = node
            elif t == MKNOD:
                node = Socket()
                ns(i, "mknod", (e.path, node), [parent(e.path)])
                names[e.path] = node
            elif t == LINK:
                node = names.get(e.path)
                if node is None:
                    raise ModelError("entry %d: %s: no such name" % (i, e))
                ns(i, "link", (e.path2, node), [parent(e.path2)])
                names[e.path2] = node
            elif t == SYNC_BEGIN:
                node = None
                if e.a != SYNC_ALL:
                    node = by_fd(i, e)
                begins[(e.pid, e.seq)] = (i, node)
            elif t == SYNC_END:
                b, node = begins.pop((e.pid, e.b), (None, None))
                if b is None:
                    raise ModelError("entry %d: sync end without a begin" % i)
                if e.err:
                    continue           # a failed sync guarantees nothing
                if e.a == SYNC_ALL:
                    self.global_syncs.append((b, i))
                else:
                    node.syncs.append((b, i))
            else:
                raise ModelError("entry %d: unknown type %d" % (i, t))

    def _index_syncs(self):
        """Per node: ends sorted, and the running max of the begins, so
        that 'the latest begin of a sync completed before P' is a
        bisect."""
        def index(syncs):
            s = sorted(syncs + self.global_syncs, key=lambda be: be[1])
            ends, best, m = [], [], -1
            for b, e in s:
                m = max(m, b)
                ends.append(e)
                best.append(m)
            return ends, best
        for node in list(self.dirs.values()) + self.inodes:
            node.sync_index = index(node.syncs)

    @staticmethod
    def synced_before(node, P):
        """Ops on node with index below the returned one are durable at
        cut P (-1: none beyond the initial state)."""
        ends, best = node.sync_index
        k = bisect.bisect_left(ends, P)
        return best[k - 1] if k else -1

    def check_complete(self, real_root):
        """The model with every entry applied must be the directory the
        recorded programs left: otherwise the recorder missed a change
        (a call it does not intercept) and every state built is
        suspect."""
        problems = []
        seen = set()
        for dirpath, dirnames, filenames in os.walk(real_root):
            for n in dirnames + filenames:
                path = os.path.join(dirpath, n)
                p = self.root + path[len(real_root):]
                seen.add(p)
                node = self.names_final.get(p)
                if node is None:
                    problems.append("%s exists but the log never made it" % p)
                elif os.path.isdir(path) != isinstance(node, Dir) or \
                        stat.S_ISSOCK(os.lstat(path).st_mode) != \
                        isinstance(node, Socket):
                    problems.append("%s: the log made a %s" % (
                        p, type(node).__name__.lower()))
                elif isinstance(node, Inode):
                    with open(path, "rb") as f:
                        real = f.read()
                    if real != bytes(node.current):
                        k = next((j for j in range(min(len(real),
                                                       len(node.current)))
                                  if real[j] != node.current[j]),
                                 min(len(real), len(node.current)))
                        problems.append("%s: contents differ from the log's "
                                        "from offset %d (file %d bytes, "
                                        "log %d)" % (p, k, len(real),
                                                     len(node.current)))
        for p in self.names_final:
            if p != self.root and p not in seen:
                problems.append("%s: the log has it, the directory not" % p)
        if problems:
            raise ModelError("the recorder missed changes:\n  " +
                             "\n  ".join(problems))


# ---- building the state at a cut point ----

class Policy:
    """How a state picks among the values that are not durable.
    latest/floor: the chance a sector (or a size) takes its newest / its
    durable value; otherwise any value in between.  ns: the chance an
    unsynced name change survives.  A regression case may force any of
    them: ns as a function of the NsOp, sector as a function (path,
    sector, lowest, highest) -> index or None (None: the random pick)."""
    PRESETS = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.3, 0.3),
               (0.8, 0.1), (0.1, 0.8)]

    def __init__(self, rng, force=None):
        self.latest, self.floor = rng.choice(self.PRESETS)
        self.ns = rng.choice([0.0, 0.0, 0.5, 1.0])
        self.sector = None
        self.rng = rng
        for k, v in (force or {}).items():
            setattr(self, k, v)

    def survives(self, op):
        if callable(self.ns):
            return self.ns(op)
        return self.rng.random() < self.ns

    def pick(self, lo, hi):
        """An index in [lo, hi]."""
        if lo >= hi:
            return hi
        r = self.rng.random()
        if r < self.latest:
            return hi
        if r < self.latest + self.floor:
            return lo
        return self.rng.randint(lo, hi)

    def pick_sector(self, path, sec, lo, hi):
        if self.sector is not None:
            k = self.sector(path, sec, lo, hi)
            if k is not None:
                return k
        return self.pick(lo, hi)

    def __str__(self):
        if callable(self.ns) or self.sector is not None:
            return "forced by the regression case"
        return "latest %.1f floor %.1f names %.1f" % (self.latest, self.floor,
                                                      self.ns)


def _sector_value(buf, sec):
    v = bytes(buf[sec * SECTOR:(sec + 1) * SECTOR])
    return v if len(v) == SECTOR else v + bytes(SECTOR - len(v))


class InodeTracker:
    """An inode's durable base and the sector histories after it, kept
    up to date as cut points advance (cut points are visited in
    increasing order, so both only move forward)."""

    def __init__(self, inode):
        self.inode = inode
        self.s = None
        self.P = 0

    def advance(self, model, P):
        ino = self.inode
        s = model.synced_before(ino, P)
        if self.s is None or s != self.s or P < self.P:
            self.s = s
            self.base = bytearray(ino.initial)
            self.k = 0                 # next op to consider
            while self.k < len(ino.ops) and ino.ops[self.k][0] < s:
                apply_data(self.base, ino.ops[self.k][1])
                self.k += 1
            self.work = bytearray(self.base)
            self.hist = {}             # sector -> [values], [0] durable
            self.floor = {}            # sector -> durable index
            self.sizes = [len(self.base)]
            self.size_floor = 0
        while self.k < len(ino.ops) and ino.ops[self.k][0] < P:
            op = ino.ops[self.k][1]
            dsync = len(op) > 3 and op[3] == "dsync"
            touched = apply_data(self.work, op)
            if touched is not None and touched[1] > touched[0]:
                a, b = touched
                for sec in range(a // SECTOR, (b - 1) // SECTOR + 1):
                    h = self.hist.get(sec)
                    if h is None:
                        # Untouched since the durable base: its value there.
                        h = self.hist[sec] = [_sector_value(self.base, sec)]
                    h.append(_sector_value(self.work, sec))
                    if dsync:
                        self.floor[sec] = len(h) - 1
            self.sizes.append(len(self.work))
            if dsync:
                self.size_floor = len(self.sizes) - 1
            self.k += 1
        self.P = P

    def image(self, policy, path):
        size = self.sizes[policy.pick(self.size_floor, len(self.sizes) - 1)]
        img = bytearray(size)
        m = min(size, len(self.base))
        img[:m] = self.base[:m]
        for sec in sorted(self.hist):
            start = sec * SECTOR
            if start >= size:
                continue
            h = self.hist[sec]
            v = h[policy.pick_sector(path, sec, self.floor.get(sec, 0),
                                     len(h) - 1)]
            stop = min(start + SECTOR, size)
            img[start:stop] = v[:stop - start]
        return img


def _make_socket(path):
    """A socket file nobody listens on, as a power cut leaves one."""
    import socket
    try:
        sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sk.bind(path)
        sk.close()
    except OSError:
        # A path too long for a socket: an empty file stands in for it.
        open(path, "wb").close()


class StateBuilder:
    """Builds states at increasing cut points."""

    def __init__(self, model):
        self.model = model
        self.trackers = {}

    def build(self, P, seed, out, force=None):
        """Write the state at cut P (random choices from seed) into the
        directory out (which must not exist); return the Policy used.
        The result mirrors the recorded root: out/<name> for
        root/<name>."""
        model = self.model
        rng = random.Random(seed)
        policy = Policy(rng, force)
        names = dict(model.base_names)
        for op in model.ns_ops:
            if op.index >= P:
                break
            durable = all(op.index < model.synced_before(d, P)
                          for d in op.dirs)
            if not durable and not policy.survives(op):
                continue
            if op.kind in ("create", "mkdir", "link", "mknod"):
                path, node = op.args
                names[path] = node
            elif op.kind == "unlink":
                path, node = op.args
                if names.get(path) is node:
                    del names[path]
            elif op.kind == "rename":
                a, b, node = op.args
                rename_names(names, a, b, node)
        os.mkdir(out)
        root = model.root
        for path in sorted(names):
            if path == root:
                continue
            # Visible only if every directory above it survived.
            p = parent(path)
            ok = True
            while p != root:
                if not isinstance(names.get(p), Dir):
                    ok = False
                    break
                p = parent(p)
            if not ok:
                continue
            dst = os.path.join(out, os.path.relpath(path, root))
            node = names[path]
            if isinstance(node, Dir):
                os.makedirs(dst, exist_ok=True)
                continue
            if isinstance(node, Socket):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                _make_socket(dst)
                continue
            t = self.trackers.get(node.id)
            if t is None:
                t = self.trackers[node.id] = InodeTracker(node)
            t.advance(model, P)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as f:
                f.write(t.image(policy, path))
        return policy


# ---- the client's log ----

class DurabilityPoint:
    """A moment after which data must survive: kind "flush" (a flush, a
    cas FUA write, a cas clean close, a server start that created or grew
    the volume: every write acknowledged before it was sent is durable
    once it is acknowledged; a FUA write is in its own) or "range" (a
    flatfile FUA write: only its own bytes).  size: the volume's size
    then; write: the FUA write.  covers: the writes (their n) whose
    replies were seen before it was sent (ClientLog.barrier); None (older
    recordings): those acknowledged at a log position up to the one it
    was sent at.  Log positions do not order a client's events: a write
    sent after a flush can be sent and acknowledged before the server
    logs anything more, at the very position the flush was sent at --
    with requests in flight, and also with one at a time when the flush
    had nothing to write (format 4 rewriting a block's units unchanged
    writes nothing)."""

    def __init__(self, kind, what, sent, acked, size, write=None,
                 covers=None):
        self.kind, self.what = kind, what
        self.sent, self.acked = sent, acked      # log byte positions
        self.size = size
        self.write = write                       # range: the Write
        self.covers = covers


class Write:
    """A write (or zero, or trim: data is zeros).  n: its place in the
    order the client sent them; sent, acked: the recorder log's size
    just before it was sent and when its reply was seen (None: never).
    Writes whose byte ranges overlap are never in flight together, so
    each byte's writes are totally ordered by n."""

    def __init__(self, n, off, data, sent, acked, what):
        self.n, self.off, self.data = n, off, data
        self.sent, self.acked = sent, acked
        self.what = what


class ClientLog:
    def __init__(self, initial):
        self.initial = bytes(initial)
        self.size = len(initial)
        self.writes = []
        self.points = []
        # Requests one at a time: then a cas volume after a crash is the
        # volume as of one flush exactly.  Workloads with requests in
        # flight clear it.
        self.sequential = True
        self._images = {}

    def write(self, off, data, sent, acked, what):
        if off + len(data) > self.size:
            raise ValueError("write past the end")
        w = Write(len(self.writes), off, bytes(data), sent, acked, what)
        self.writes.append(w)
        return w

    def barrier(self, what, sent, acked, write=None, covers=None):
        """write: the FUA write that made this barrier (it is in it);
        covers: see DurabilityPoint (None: the writes acknowledged by
        now, which is right whenever no request is in flight)."""
        if covers is None:
            covers = frozenset(w.n for w in self.writes
                               if w.acked is not None)
        self.points.append(DurabilityPoint("flush", what, sent, acked,
                                           self.size, write, covers))

    def range_point(self, w):
        self.points.append(DurabilityPoint("range", w.what, w.sent, w.acked,
                                           self.size, w))

    def grow(self, size):
        self.size = max(self.size, size)

    def required(self, d):
        """The writes barrier d makes durable: those acknowledged before
        it was sent (all writes, for a sequential client)."""
        if d is None:
            return []
        covers = getattr(d, "covers", None)     # (older recordings: none)
        if covers is not None:
            return [w for w in self.writes if w.n in covers or w is d.write]
        return [w for w in self.writes
                if (w.acked is not None and w.acked <= d.sent) or
                w is d.write]

    def image(self, d):
        """The volume as barrier d makes it durable (None: initially)."""
        key = id(d)
        img = self._images.get(key)
        if img is None:
            img = bytearray(self.initial)
            if d is not None and d.size > len(img):
                img.extend(bytes(d.size - len(img)))
            for w in self.required(d):
                img[w.off:w.off + len(w.data)] = w.data
            img = self._images[key] = bytes(img)
        return img

    def __getstate__(self):
        st = dict(self.__dict__)
        st["_images"] = {}
        return st


# ---- checking a state ----

class CheckFailure(Exception):
    """A state that fails a check.  finding: the known finding it is an
    instance of (workloads.FINDINGS), set by the workload's classifier;
    None: a new failure."""
    def __init__(self, msg, finding=None):
        super().__init__(msg)
        self.finding = finding


def _first_diff(a, b):
    n = min(len(a), len(b))
    lo = 0
    step = 65536
    while lo < n and a[lo:lo + step] == b[lo:lo + step]:
        lo += step
    for i in range(lo, min(lo + step, n)):
        if a[i] != b[i]:
            return i
    return n if len(a) != len(b) else -1


_ZERO_TO_ONE = bytes([1] + [0] * 255)


def _eq_mask(a, b):
    """An int whose byte k is 1 where a[k] == b[k], else 0 (little
    endian: byte k is bits 8k..8k+7)."""
    n = len(a)
    x = int.from_bytes(a, "little") ^ int.from_bytes(b, "little")
    return int.from_bytes(x.to_bytes(n, "little").translate(_ZERO_TO_ONE),
                          "little")


def _first_clear(mask, n):
    b = mask.to_bytes(n, "little")
    return b.index(0)


class _Ones(dict):
    def __missing__(self, n):
        v = self[n] = int.from_bytes(b"\x01" * n, "little")
        return v


_ALL_ONES = _Ones()


def check_data(client, model, P, got, whole_volume, blocksize):
    """Raise CheckFailure unless the volume read at cut P (bytes got) is
    one the client may see: every byte as of the last barrier
    acknowledged before P, or as written by a write not covered by it
    (sent before P).  whole_volume (cas: a root is published atomically,
    a block is written atomically): with a sequential client, the whole
    volume as of one barrier; otherwise each block as of some point of
    its own history."""
    count = model.count
    req = None
    for d in client.points:
        if d.kind == "flush" and count(d.acked) <= P:
            req = d
    floor = bytearray(client.image(req))
    covered = {w.n for w in client.required(req)}
    req_what = "%s (acknowledged at log entry %d <= cut %d)" % (
        req.what, count(req.acked), P) if req else "the initial contents"
    if len(got) < len(floor):
        raise CheckFailure("the volume is %d bytes, but %s made it %d" % (
            len(got), req_what, len(floor)))
    floor.extend(bytes(len(got) - len(floor)))
    # Writes that may have reached the server before the cut, and are
    # not covered by the barrier.
    later = [w for w in client.writes
             if w.n not in covered and count(w.sent) < P]
    # Flatfile FUA writes acknowledged before the cut raise the floor of
    # their own bytes: (start, end, n of the write).
    raised = []
    for d in client.points:
        w = d.write
        if d.kind == "range" and w.n not in covered and \
                count(d.acked) <= P:
            floor[w.off:w.off + len(w.data)] = w.data
            raised.append((w.off, w.off + len(w.data), w.n))
    if bytes(floor) != got:
        step = 4096
        for lo in range(0, len(got), step):
            hi = min(lo + step, len(got))
            if got[lo:hi] == floor[lo:hi]:
                continue
            ws = [w for w in later
                  if w.off < hi and lo < w.off + len(w.data)]
            rs = [r for r in raised if r[0] < hi and lo < r[1]]
            ok = _eq_mask(got[lo:hi], floor[lo:hi])
            for w in ws:
                # The bytes of w that count: inside the chunk, and not
                # under a FUA write acknowledged after it.
                spans = [(max(lo, w.off), min(hi, w.off + len(w.data)))]
                for r in rs:
                    if w.n <= r[2]:
                        spans = [p for a, b in spans
                                 for p in ((a, min(b, r[0])),
                                           (max(a, r[1]), b)) if p[0] < p[1]]
                for a, b in spans:
                    ok |= _eq_mask(got[a:b], w.data[a - w.off:b - w.off]) \
                        << (8 * (a - lo))
            if ok == _ALL_ONES[hi - lo]:
                continue
            i = lo + _first_clear(ok, hi - lo)
            start = -1
            for r in rs:
                if r[0] <= i < r[1]:
                    start = max(start, r[2])
            cands = sorted({w.data[i - w.off] for w in ws
                            if w.n > start and
                            w.off <= i < w.off + len(w.data)})
            raise CheckFailure(
                "offset %d (block %d) reads %#04x: the durable value is "
                "%#04x as of %s; later writes there: %s" % (
                    i, i // blocksize, got[i], floor[i], req_what,
                    ", ".join("%#04x" % c for c in cands) or "none"))
    if not whole_volume:
        return
    if client.sequential:
        _check_one_flush(client, count, P, got, req, blocksize, req_what)
    else:
        _check_blocks(floor, later, got, blocksize, req_what)


def _check_one_flush(client, count, P, got, req, blocksize, req_what):
    cands = [client.image(req)]
    after = req is None
    for d in client.points:
        if d is req:
            after = True
        elif after and d.kind == "flush" and count(d.sent) < P:
            cands.append(client.image(d))

    def same(img):
        # img, then zeros (a volume grown since) up to the read size.
        n = len(img)
        return n <= len(got) and got.startswith(img) and \
            got.count(0, n) == len(got) - n
    if not any(same(c) for c in cands):
        def pad(img):
            return img + bytes(len(got) - len(img))
        best = max(cands, key=lambda c: _first_diff(pad(c), got))
        i = _first_diff(pad(best), got)
        raise CheckFailure(
            "the volume is not as of any one flush from %s on (%d "
            "candidates; the closest differs from offset %d, block %d)"
            % (req_what, len(cands), i, i // blocksize))


def _check_blocks(floor, later, got, bs, req_what):
    """Each block is as of some point of its own history: the durable
    value, then each later write to it applied in turn (writes to one
    block are never in flight together in such workloads)."""
    for lo in range(0, len(got), bs):
        hi = min(lo + bs, len(got))
        if got[lo:hi] == floor[lo:hi]:
            continue
        blk = bytearray(floor[lo:hi])
        ok = False
        for w in sorted((w for w in later
                         if w.off < hi and lo < w.off + len(w.data)),
                        key=lambda w: w.n):
            a, b = max(lo, w.off), min(hi, w.off + len(w.data))
            blk[a - lo:b - lo] = w.data[a - w.off:b - w.off]
            if blk == got[lo:hi]:
                ok = True
                break
        if not ok:
            raise CheckFailure("block %d is a mixture: not its contents at "
                               "any point since %s" % (lo // bs, req_what))


# ---- running a workload ----

def _log_size(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


class Recording:
    """A recorded workload on disk: root/ (the watched directory, as the
    workload left it), baseline/ (root/ before it started), log (the
    recorder's), client.pickle (ClientLog + settings)."""

    def __init__(self, path):
        self.path = path
        self.root = os.path.join(path, "root")
        self.baseline = os.path.join(path, "baseline")
        self.log = os.path.join(path, "log")
        self.work = os.path.join(path, "server")

    def save(self, client, info):
        with open(os.path.join(self.path, "client.pickle"), "wb") as f:
            pickle.dump((client, info), f)

    def load(self):
        with open(os.path.join(self.path, "client.pickle"), "rb") as f:
            return pickle.load(f)


class VolumeLife:
    """A volume or snapshot the client knows of: its client log, and when
    its name came to be and went away, as (sent, acked) log positions
    (born None: with the first server start; died None: still there).
    A renamed volume is two lives sharing one log."""

    def __init__(self, name, log, born=None, snapshot=False):
        self.name, self.log, self.born = name, log, born
        self.died = None
        self.snapshot = snapshot

    def expect(self, count, P):
        """At cut P: "present", "absent" or "maybe" (being created or
        removed when the power went)."""
        if self.died and count(self.died[1]) <= P:
            return "absent"
        dying = self.died is not None and count(self.died[0]) < P
        if self.born is None or count(self.born[1]) <= P:
            return "maybe" if dying else "present"
        if count(self.born[0]) < P:
            return "maybe"
        return "absent"


class Session:
    """What a workload function is given: the server, and a client whose
    every request is logged (writes, and the recorder log's size when a
    flush or FUA is acknowledged), on the current volume (use(), open()).
    History operations (snapshot, clone, delete, rename) go through the
    nbdcas tool: to the server through its control socket while it runs,
    to the store itself (recorded too) when it does not."""

    def __init__(self, wl, rec, initial=None):
        import nbdtest
        self.nbdtest = nbdtest
        self.wl = wl
        self.rec = rec
        self.size = wl.size
        self.blocksize = wl.blocksize
        self.srv = None
        self.rng = random.Random(wl.name)
        self.vols = {"default": VolumeLife(
            "default", ClientLog(initial if initial is not None
                                 else bytes(self.size)))}
        self.cur = "default"
        self.handles = {}
        self.renames = []          # (old, new, sent, acked)
        self.env = dict(wl.env)
        self.starts = []

    @property
    def client(self):
        """The current volume's client log."""
        return self.vols[self.cur].log

    @property
    def h(self):
        return self.handles.get(self.cur)

    # -- data --

    def data(self, n):
        """n reproducible, non-zero bytes (a zeroed byte always shows)."""
        return bytes(b | 1 for b in self.rng.randbytes(n))

    def pos(self):
        return _log_size(self.rec.log)

    def write(self, off, data, fua=False):
        import nbd
        if isinstance(data, int):
            data = self.data(data)
        sent = self.pos()
        self.h.pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
        acked = self.pos()
        w = self.client.write(off, data, sent, acked,
                              "%swrite #%d at %d+%d" % (
                                  "FUA " if fua else "",
                                  len(self.client.writes), off, len(data)))
        if fua:
            self._fua_point(w)
        return w

    def zero(self, off, n, fua=False, trim=False):
        import nbd
        sent = self.pos()
        if trim:
            self.h.trim(n, off, nbd.CMD_FLAG_FUA if fua else 0)
        else:
            self.h.zero(n, off, nbd.CMD_FLAG_FUA if fua else 0)
        acked = self.pos()
        w = self.client.write(off, bytes(n), sent, acked, "%s%s #%d at %d+%d"
                              % ("FUA " if fua else "",
                                 "trim" if trim else "zero",
                                 len(self.client.writes), off, n))
        if fua:
            self._fua_point(w)
        return w

    def trim(self, off, n, fua=False):
        return self.zero(off, n, fua=fua, trim=True)

    def aio(self, ops):
        """Send ops all at once (requests in flight together) and wait
        for every reply: ("write", offset, n or bytes), ("zero", offset,
        n), ("flush",).  Writes in one call must not overlap each other
        (their order would be unknown); a flush covers the writes whose
        replies were seen before it was sent.  The client log is then no
        longer sequential."""
        self.client.sequential = False
        pending = []
        for op in ops:
            sent = self.pos()
            if op[0] == "flush":
                # What it covers: the writes whose replies were seen by
                # now (not those acknowledged at a log position up to
                # sent: see DurabilityPoint).
                covers = frozenset(w.n for w in self.client.writes
                                   if w.acked is not None)
                c = self.h.aio_flush()
                pending.append((c, ("flush", sent, covers)))
                continue
            off = op[1]
            if op[0] == "write":
                data = self.data(op[2]) if isinstance(op[2], int) else op[2]
                c = self.h.aio_pwrite(data, off)
            else:
                data = bytes(op[2])
                c = self.h.aio_zero(op[2], off)
            w = self.client.write(off, data, sent, None, "%s #%d at %d+%d "
                                  "(in flight)" % (op[0],
                                                   len(self.client.writes),
                                                   off, len(data)))
            pending.append((c, w))
            # Replies that came in meanwhile.
            self._reap(pending, block=False)
        while pending:
            self._reap(pending, block=True)

    def _reap(self, pending, block):
        self.h.poll(-1 if block else 0)
        for item in list(pending):
            c, what = item
            if not self.h.aio_command_completed(c):
                continue
            acked = self.pos()
            pending.remove(item)
            if isinstance(what, Write):
                what.acked = acked
            else:
                self.client.barrier("flush #%d (in flight)" %
                                    len(self.client.points), what[1], acked,
                                    covers=what[2])

    def _fua_point(self, w):
        if self.wl.fua_flushes_all:
            self.client.barrier(w.what, w.sent, w.acked, w)
        else:
            self.client.range_point(w)

    def flush(self):
        sent = self.pos()
        self.h.flush()
        self.client.barrier("flush #%d" % len(self.client.points), sent,
                            self.pos())

    # -- volumes --

    def open(self, name):
        """Connect to volume (or snapshot) name; it becomes current."""
        self.handles[name] = self.srv.connect(name)
        self.cur = name
        return self.handles[name]

    def use(self, name):
        self.cur = name

    def live(self):
        return [v for v in self.vols.values() if v.died is None]

    def _tool(self, *args):
        p = self.nbdcas(*args)
        if p.returncode != 0:
            raise RuntimeError("nbdcas %s: exit %d: %s%s" % (
                " ".join(args), p.returncode, p.stdout, p.stderr))

    def snapshot(self, vol, snap):
        """nbdcas snapshot: VOL@SNAP, as of a flush of vol."""
        self._copy("snapshot", vol, snap, "%s@%s" % (vol, snap), True)

    def clone(self, source, new):
        """nbdcas clone: a new writable volume as source is now."""
        self._copy("clone", source, new, new, False)

    def _copy(self, cmd, source, arg, name, snapshot):
        sent = self.pos()
        self._tool(cmd, "STORE", source, arg)
        acked = self.pos()
        src = self.vols[source].log
        src.barrier("%s %s" % (cmd, name), sent, acked)
        self.vols[name] = VolumeLife(
            name, ClientLog(src.image(src.points[-1])), born=(sent, acked),
            snapshot=snapshot)

    def import_image(self, vol, data, create=False):
        """nbdcas import (the server must be stopped: a served store
        refuses it): data (bytes, or a size: reproducible bytes) into
        vol from offset 0, or into a new volume of its size (create).
        Durable when the tool exits."""
        if isinstance(data, int):
            data = self.data(data)
        d = os.path.join(self.rec.path, "images")
        os.makedirs(d, exist_ok=True)
        img = os.path.join(d, "%s.%d" % (vol, len(os.listdir(d))))
        with open(img, "wb") as f:
            f.write(data)
        sent = self.pos()
        self._tool(*(["import", "STORE", vol, img] +
                     (["--create"] if create else [])))
        acked = self.pos()
        if create:
            self.vols[vol] = VolumeLife(vol, ClientLog(bytes(len(data))),
                                        born=(sent, acked))
        log = self.vols[vol].log
        log.write(0, data, sent, acked, "import into %s" % vol)
        log.barrier("import into %s" % vol, sent, acked, log.writes[-1])

    def gc(self, *args):
        """nbdcas gc (through the server if it runs, else on the store):
        it flushes every open volume first, so it is a barrier for each
        (a root it publishes must be a candidate state)."""
        sent = self.pos()
        self._tool(*(["gc", "STORE"] + list(args)))
        acked = self.pos()
        for v in self.live():
            if not v.snapshot:
                v.log.barrier("gc", sent, acked)

    def delete(self, name, recursive=False):
        sent = self.pos()
        self._tool(*(["delete", "STORE", name] +
                     (["--recursive"] if recursive else [])))
        acked = self.pos()
        for v in self.live():
            if v.name == name or (recursive and
                                  v.name.startswith(name + "@")):
                v.died = (sent, acked)

    def rename(self, old, new):
        """nbdcas rename (a volume's snapshots follow it)."""
        sent = self.pos()
        self._tool("rename", "STORE", old, new)
        acked = self.pos()
        pairs = [(old, new)]
        if "@" not in old:
            pairs += [(v.name, new + v.name[len(old):]) for v in self.live()
                      if v.name.startswith(old + "@")]
        for o, n in pairs:
            life = self.vols[o]
            life.died = (sent, acked)
            self.vols[n] = VolumeLife(n, life.log, born=(sent, acked),
                                      snapshot=life.snapshot)
            self.renames.append((o, n, sent, acked))
            if self.cur == o:
                self.cur = n

    # -- the server --

    def params(self, size=None):
        return self.wl.server_params(self.rec.root, size or self.size)

    def start(self, size=None, server=None):
        """Start the server (recorded) and connect to the default
        volume."""
        nbdtest = self.nbdtest
        default = self.vols["default"].log
        if size:
            default.grow(size)
            self.size = size
        sent = self.pos()
        params = self.params()
        self.starts.append((sent, params))
        saved = dict(os.environ)
        try:
            preload = os.environ.get("SANITIZER_PRELOAD", "")
            os.environ["LD_PRELOAD"] = (preload + " " if preload else "") + \
                os.environ["PLR_RECORDER"]
            if preload:
                os.environ["SANITIZER_PRELOAD"] = os.environ["LD_PRELOAD"]
            os.environ["PLR_DIR"] = self.rec.root
            os.environ["PLR_LOG"] = self.rec.log
            os.environ.update(self.env)
            os.makedirs(self.rec.work, exist_ok=True)
            self.srv = nbdtest.Server(server or self.wl.server,
                                      self.wl.backend, params,
                                      self.rec.work).start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.cur = "default"
        self.handles = {"default": self.srv.connect()}
        if self.wl.backend == "cas":
            # The volume exists (created, or grown) once a client is in.
            default.barrier("server start (size %d)" % self.size, sent,
                            self.pos())
        return self.h

    def stop(self):
        """Disconnect and stop the server cleanly (cas: the last close
        of each volume flushes it; the index cache is saved)."""
        sent = self.pos()
        for h in self.handles.values():
            h.shutdown()
        self.handles = {}
        rc = self.srv.stop()
        if rc != 0 and self.srv.server != "nbdkit":
            raise RuntimeError("server exited with %s:\n%s" % (
                rc, self.srv.log()))
        if self.wl.backend == "cas":
            for v in self.live():
                if not v.snapshot:
                    v.log.barrier("clean server stop", sent, self.pos())
        self.srv = None

    def restart(self, size=None, server=None):
        self.stop()
        return self.start(size=size, server=server)

    def recorded_env(self):
        """The environment of a recorded process (of ours: in a sanitizer
        build the runtime must come first in LD_PRELOAD)."""
        env = dict(os.environ)
        env["LD_PRELOAD"] = self.nbdtest.preload(os.environ["PLR_RECORDER"])
        env["PLR_DIR"] = self.rec.root
        env["PLR_LOG"] = self.rec.log
        env.update(self.env)
        return env

    def nbdcas(self, *args):
        """Run the nbdcas tool, recorded; STORE in args is replaced by
        the store's path.  With the server running the tool hands the
        command to it (the control socket).  Returns its
        CompletedProcess."""
        store = os.path.join(self.rec.root, "store")
        argv = [os.environ["NBDCAS"]] + [store if a == "STORE" else a
                                         for a in args]
        return subprocess.run(argv, env=self.recorded_env(),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=300)


def record(wl, path):
    """Run workload wl, recording into path (created).  Returns the
    Recording."""
    os.makedirs(path)
    rec = Recording(path)
    os.makedirs(rec.root)
    initial = wl.prepare(rec.root)
    shutil.copytree(rec.root, rec.baseline, symlinks=True)
    open(rec.log, "wb").close()
    s = Session(wl, rec, initial)
    try:
        wl.body(s)
    finally:
        if s.srv is not None:
            for h in s.handles.values():
                if hasattr(h, "close"):
                    h.close()
            s.srv.stop(signal.SIGKILL)
    rec.save(s.vols["default"].log, {"workload": wl.name,
                                     "root": rec.root,
                                     "starts": s.starts,
                                     "volumes": s.vols,
                                     "renames": s.renames})
    return rec


# ---- checking states ----

class Checker:
    """Checks states of one recording.  Set up once per process; each
    worker builds and checks a contiguous run of cut points."""

    def __init__(self, wl, rec, drop=None):
        self.wl = wl
        self.rec = rec
        self.client, self.info = rec.load()
        self.vols = self.info.get("volumes") or {
            "default": VolumeLife("default", self.client)}
        entries = read_log(rec.log)
        if drop is not None:
            entries = drop_sync(entries, drop)
        # The log names files by the path the recording had, which a
        # kept recording (copied elsewhere) no longer has.
        self.model = Model(self.info.get("root", rec.root), rec.baseline,
                           entries)
        self.nentries = len(entries)
        self.skip_fsck = False

    def check_complete(self):
        self.model.check_complete(self.rec.root)

    def params_at(self, P):
        starts = self.info["starts"]
        cur = starts[0][1]
        for sent, params in starts:
            if self.model.count(sent) < P:
                cur = params
        return cur

    def check_state(self, builder, P, seed, scratch, via_server=None,
                    rewrite=False, keep=None, force=None):
        """Build and check one state.  Returns None if it passes, else
        (message, finding).  keep: a directory to rebuild a failing state
        in (as the power cut left it, before any check touched it)."""
        state = os.path.join(scratch, "state")
        shutil.rmtree(state, ignore_errors=True)
        policy = builder.build(P, seed, state, force)
        try:
            self.wl.check(self, state, P, via_server, rewrite, scratch)
            return None
        except CheckFailure as e:
            if keep:
                builder.build(P, seed, keep, force)
            return ("%s (policy: %s)" % (e, policy), e.finding)
        finally:
            shutil.rmtree(state, ignore_errors=True)

    # -- helpers for workload checks --

    def fsck(self, store):
        p = subprocess.run([os.environ["NBDCAS"], "fsck", "--full", store],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=300)
        if p.returncode != 0:
            raise CheckFailure("nbdcas fsck --full: exit %d: %s%s" % (
                p.returncode, p.stdout.strip(), p.stderr.strip()))
        return p.stdout

    def read_server(self, server, backend, params, scratch, env=None):
        """Start server on the state, read the whole export, stop it."""
        import nbdtest
        work = os.path.join(scratch, "srv")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        saved = dict(os.environ)
        try:
            os.environ.update(env or {})
            srv = nbdtest.Server(server, backend, params, work).start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        try:
            try:
                h = srv.connect()
            except Exception as e:
                raise CheckFailure("%s does not serve the state: %s\n%s" % (
                    server, e, srv.log()))
            size = h.get_size()
            out = bytearray()
            step = 1 << 20
            for off in range(0, size, step):
                out += h.pread(min(step, size - off), off)
            h.shutdown()
        finally:
            rc = srv.stop()
        if rc != 0 and server != "nbdkit":
            raise CheckFailure("%s exited with %s:\n%s" % (server, rc,
                                                          srv.log()))
        return bytes(out)


def drop_sync(entries, which):
    """The log with one sync removed (its begin and end): the self-test
    of the simulator.  which: index into the list of successful syncs."""
    ends = [i for i, e in enumerate(entries)
            if e.type == SYNC_END and e.err == 0]
    end = ends[which]
    e = entries[end]
    begin = next(i for i in range(end - 1, -1, -1)
                 if entries[i].type == SYNC_BEGIN and
                 entries[i].pid == e.pid and entries[i].seq == e.b)
    return [x for i, x in enumerate(entries) if i not in (begin, end)]


def choose_cuts(model, n, seed):
    """n (cut point, state seed) pairs, cut points ascending.  Half are
    right around the log's interesting entries (syncs, renames), half
    uniform; the first and last are always in."""
    rng = random.Random(seed)
    N = len(model.entries)
    interesting = set([0, N])
    for i, e in enumerate(model.entries):
        if e.type in (SYNC_BEGIN, SYNC_END, RENAME, UNLINK, MKDIR):
            interesting.update((i, i + 1))
        elif e.type == OPEN and e.a & O_CREAT:
            interesting.add(i + 1)
    interesting = sorted(p for p in interesting if 0 <= p <= N)
    cuts = [0, N]
    while len(cuts) < n:
        if rng.random() < 0.5:
            cuts.append(rng.choice(interesting))
        else:
            cuts.append(rng.randint(0, N))
    return sorted((P, rng.getrandbits(32)) for P in cuts[:n])


class Result:
    def __init__(self):
        self.states = 0
        self.via_server = 0
        self.rewrites = 0
        self.failures = []         # (P, seed, message, finding, kept)
        self.seconds = 0.0
        self.nentries = 0

    def new_failures(self):
        return [f for f in self.failures if f[3] is None]

    def known(self):
        """{finding: [failures]}"""
        out = {}
        for f in self.failures:
            if f[3] is not None:
                out.setdefault(f[3], []).append(f)
        return out


def _scratch_base():
    """Where states are built: tmpfs if there is one (states are
    written and read once, thousands of times)."""
    for d in ("/dev/shm", os.environ.get("TMPDIR", "/tmp"), "/tmp"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK):
            return d
    return None


_worker_checker = None


def _run_chunk(args):
    cuts, base, keep_dir, max_keep = args
    ck = _worker_checker
    builder = StateBuilder(ck.model)
    scratch = tempfile.mkdtemp(prefix="plstate.", dir=base)
    res = []
    kept = 0
    try:
        for P, seed, srv, rw in cuts:
            keep = None
            if keep_dir and kept < max_keep:
                keep = os.path.join(keep_dir, "state-cut%d-seed%d" % (P, seed))
            r = ck.check_state(builder, P, seed, scratch, via_server=srv,
                               rewrite=rw, keep=keep)
            msg, finding = r if r else (None, None)
            if msg and keep and finding is None:
                kept += 1
            elif keep and os.path.exists(keep):
                shutil.rmtree(keep, ignore_errors=True)
                keep = None
            res.append((P, seed, srv, rw, msg, finding, keep))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return res


def check_recording(wl, rec, ncuts, seed, jobs=2, keep_dir=None,
                    drop=None, cuts=None):
    """Check ncuts states of a recording (or the given (P, seed) cuts);
    returns a Result.  Every 20th state (at least 10 per run) is read
    through a real server, alternating between wl.servers; every 4th
    cas state also gets the rewrite check."""
    import multiprocessing
    global _worker_checker
    t0 = time.monotonic()
    ck = Checker(wl, rec, drop=drop)
    ck.check_complete()
    _worker_checker = ck
    if cuts is None:
        cuts = choose_cuts(ck.model, ncuts, seed)
    every = max(1, min(20, len(cuts) // 10))
    plan = []
    for i, (P, s) in enumerate(cuts):
        srv = wl.servers[(i // every) % len(wl.servers)] \
            if i % every == every // 2 else None
        plan.append((P, s, srv, wl.backend == "cas" and i % 4 == 1))
    jobs = max(1, min(jobs, len(plan)))
    n = (len(plan) + jobs - 1) // jobs
    base = _scratch_base()
    args = [(plan[j * n:(j + 1) * n], base, keep_dir, 3)
            for j in range(jobs) if plan[j * n:(j + 1) * n]]
    if len(args) == 1:
        chunks = [_run_chunk(args[0])]
    else:
        with multiprocessing.get_context("fork").Pool(len(args)) as pool:
            chunks = pool.map(_run_chunk, args)
    r = Result()
    for ch in chunks:
        for P, s, srv, rw, msg, finding, kept in ch:
            r.states += 1
            r.via_server += srv is not None
            r.rewrites += rw
            if msg:
                r.failures.append((P, s, msg, finding, kept))
    r.seconds = time.monotonic() - t0
    r.nentries = ck.nentries
    return r


# ---- the test scripts' driver (TAP) ----

def env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def prerequisites():
    """None if the simulator can run here, else why not (a skip)."""
    for var, what in (("PLR_RECORDER", "the recorder (tests/powerloss/"
                       "recorder.so)"),
                      ("PLR_CASREAD", "tests/powerloss/casread")):
        p = os.environ.get(var)
        if not p or not os.path.exists(p):
            return "%s is not built" % what
    import nbdtest
    if nbdtest.VALGRIND:
        return "not under valgrind: the recording is the point here, and " \
            "the servers' memory is checked by the rest of the suite"
    return None


def _keep_base():
    return os.environ.get("POWERLOSS_KEEP") or os.environ.get("TMPDIR",
                                                              "/tmp")


def _sockets(d, names):
    return [n for n in names
            if stat.S_ISSOCK(os.lstat(os.path.join(d, n)).st_mode)]


def repro_hint(rec_path, P, seed, srv=None, rw=False):
    return ("%s check %s --cut %d --seed %d%s%s" % (
        os.path.join(HERE, "powerloss.py"), rec_path, P, seed,
        " --server " + srv if srv else "", " --rewrite" if rw else ""))


def run_workload(tap, wl, ncuts, seed, jobs, findings):
    """Record wl, check ncuts states; one TAP line.  Failures that are
    instances of a known finding (findings: {id: text}) do not fail the
    line (the finding has its own expected-to-fail regression case);
    they are counted in the diagnostics.  A new failure fails it, and
    the recording and up to 3 failing states are kept."""
    import nbdtest
    tmp = tempfile.mkdtemp(prefix="powerloss-%s." % wl.name,
                           dir=_scratch_base())
    keep = False
    desc = "powerloss %s: %d states, no acknowledged byte lost, fsck clean" \
        % (wl.name, ncuts)
    try:
        t0 = time.monotonic()
        rec = record(wl, os.path.join(tmp, "rec"))
        trec = time.monotonic() - t0
        kd = os.path.join(tmp, "failed")
        os.makedirs(kd)
        r = check_recording(wl, rec, ncuts, seed, jobs=jobs, keep_dir=kd)
        new = r.new_failures()
        diag = ["%s: recorded with %s in %.1f s (%d log entries); %d "
                "states in %.1f s (%d through a server, %d with the rewrite "
                "check), seed %d" % (wl.name, wl.server, trec, r.nentries,
                                     r.states, r.seconds, r.via_server,
                                     r.rewrites, seed)]
        for fid, fs in sorted(r.known().items()):
            diag.append("known finding %s (%s): %d states, e.g. cut %d "
                        "seed %d" % (fid, findings.get(fid, "?"), len(fs),
                                     fs[0][0], fs[0][1]))
        if new:
            keep = True
            dest = tempfile.mkdtemp(prefix="powerloss-failed-%s." % wl.name,
                                    dir=_keep_base())
            # Sockets (the servers', a store's control socket) do not
            # copy across file systems; nothing needs them.
            for src, name in ((rec.path, "rec"), (kd, "states")):
                shutil.copytree(src, os.path.join(dest, name), symlinks=True,
                                ignore=_sockets)
            diag.append("%d new failures; recording and states kept in %s"
                        % (len(new), dest))
            for P, s, msg, _, kept in new[:5]:
                diag.append("cut %d seed %d: %s" % (P, s, msg))
                diag.append("  rebuild and check: " +
                            repro_hint(os.path.join(dest, "rec"), P, s))
        tap.ok(not new, desc, "\n".join(diag))
        for line in diag if not new else []:
            print("# " + line, flush=True)
        return r
    except Exception:
        import traceback
        tap.ok(False, desc, traceback.format_exc())
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    del nbdtest


class Regression:
    """A finding reproduced on purpose: a workload, a cut point found in
    its logs (locate(model, client log) -> P), and forced choices (force: see Policy).
    Reported as an expected failure (TAP TODO) while the state fails as
    the finding says; once it passes, the TODO line is an unexpected pass
    (a failure): mark the case fixed=True, and from then on it is a plain
    test that must pass."""

    def __init__(self, finding, text, workload, locate, force, rewrite=False,
                 skip_fsck=False, fixed=False):
        self.finding, self.text = finding, text
        self.fixed = fixed
        self.workload = workload
        self.locate, self.force, self.rewrite = locate, force, rewrite
        self.skip_fsck = skip_fsck


def run_regression(tap, reg, wl):
    tmp = tempfile.mkdtemp(prefix="powerloss-reg.", dir=_scratch_base())
    desc = "powerloss regression %s: %s" % (reg.finding, reg.text)
    try:
        rec = record(wl, os.path.join(tmp, "rec"))
        ck = Checker(wl, rec)
        ck.check_complete()
        ck.skip_fsck = reg.skip_fsck
        P = reg.locate(ck.model, ck.client)
        scratch = os.path.join(tmp, "scratch")
        os.makedirs(scratch)
        r = ck.check_state(StateBuilder(ck.model), P, 0, scratch,
                           rewrite=reg.rewrite, force=reg.force)
        if reg.fixed:
            tap.ok(r is None, desc, "cut %d: %s" % (P, r[0]) if r else None)
        elif r is None:
            tap.todo(True, desc, reg.finding, "the state at cut %d passes: "
                     "the finding is fixed; mark the case fixed" % P)
        elif r[1] == reg.finding:
            tap.todo(False, desc, reg.finding, "cut %d: %s" % (P, r[0]))
        else:
            tap.ok(False, desc, "cut %d fails, but not as finding %s: %s" % (
                P, reg.finding, r[0]))
    except Exception:
        import traceback
        tap.ok(False, desc, traceback.format_exc())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tap():
    import nbdtest

    class TAP(nbdtest.TAP):
        def todo(self, cond, desc, reason, diag=None):
            # "not ok # TODO" is an expected failure; "ok # TODO" an
            # unexpected pass, which the driver counts as a failure.
            self.n += 1
            print("%s %d - %s # TODO %s" % ("ok" if cond else "not ok",
                                            self.n, desc, reason),
                  flush=True)
            for line in str(diag or "").rstrip().splitlines():
                print("# " + line, flush=True)
    return TAP


def TAP(n):
    """nbdtest's TAP producer, with expected failures."""
    return _tap()(n)


def tap_main(backend):
    """The body of tests/test-powerloss-<backend>.py."""
    import nbdtest
    import workloads
    why = prerequisites()
    if why:
        nbdtest.skip_all(why)
    names = workloads.names(backend)
    regs = [r for r in workloads.REGRESSIONS
            if workloads.get(r.workload).backend == backend]
    want = os.environ.get("POWERLOSS_WORKLOADS")
    if want:
        names = [n for n in names if n in want.split()]
        regs = [r for r in regs if r.workload in want.split()]
    ncuts = env_int("POWERLOSS_CUTS", 200)
    seed = env_int("POWERLOSS_SEED", int.from_bytes(os.urandom(4), "little"))
    jobs = env_int("POWERLOSS_JOBS", 2)
    nbdtest._watchdog(env_int("NBDCAS_TEST_TIMEOUT", 900 + ncuts))
    print("# seed %d (POWERLOSS_SEED=%d to choose the same cut points "
          "again), %d cut points per workload" % (seed, seed, ncuts),
          flush=True)
    tap = TAP(len(names) + len(regs))
    for n in names:
        run_workload(tap, workloads.get(n), ncuts, seed, jobs,
                     workloads.FINDINGS)
    for r in regs:
        run_regression(tap, r, workloads.get(r.workload))
    sys.exit(1 if tap.failed else 0)


# ---- command line: rebuild a state, dump a log ----

def main(argv):
    import argparse
    ap = argparse.ArgumentParser(
        description="power-loss simulator: rebuild or check a state of a "
        "kept recording, or dump its log")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="print a recording's log")
    d.add_argument("recording")
    b = sub.add_parser("rebuild", help="build the state at a cut point")
    b.add_argument("recording")
    b.add_argument("--cut", type=int, required=True)
    b.add_argument("--seed", type=int, required=True)
    b.add_argument("--out", required=True)
    c = sub.add_parser("check", help="build and check the state at a cut "
                       "point (as the test did)")
    c.add_argument("recording")
    c.add_argument("--cut", type=int, required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--server", help="read through this server (minnbd, "
                   "nbdkit)")
    c.add_argument("--rewrite", action="store_true")
    c.add_argument("--keep", help="if it fails, build the state here too")
    a = ap.parse_args(argv)
    rec = Recording(os.path.abspath(a.recording))
    if a.cmd == "dump":
        for i, e in enumerate(read_log(rec.log)):
            print("%6d %s" % (i, e))
        return 0
    import workloads
    client, info = rec.load()
    wl = workloads.get(info["workload"])
    ck = Checker(wl, rec)
    builder = StateBuilder(ck.model)
    if a.cmd == "rebuild":
        pol = builder.build(a.cut, a.seed, a.out)
        print("state at cut %d (of %d entries), seed %d, policy %s: %s" % (
            a.cut, ck.nentries, a.seed, pol, a.out))
        return 0
    scratch = tempfile.mkdtemp(prefix="plcheck.", dir=_scratch_base())
    try:
        r = ck.check_state(builder, a.cut, a.seed, scratch,
                           via_server=a.server, rewrite=a.rewrite,
                           keep=a.keep)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if r is None:
        print("ok")
        return 0
    print("%s%s" % ("known finding %s: " % r[1] if r[1] else "", r[0]))
    return 1


if __name__ == "__main__":
    # Run as the module workloads.py imports, so that both see one
    # CheckFailure class.
    import powerloss
    sys.exit(powerloss.main(sys.argv[1:]))
