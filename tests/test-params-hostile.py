#!/usr/bin/python3
# Bad parameters and hostile names (issue 5, item 5): every minnbd option
# and plugin parameter given a wrong, empty, huge or malformed value must
# end the server at once with a non-zero exit and a message on stderr
# that names the problem -- never a crash (signal, sanitizer report),
# never a server that starts anyway.  Hostile export names sent by a
# client are refused while the server keeps serving.  (The backends'
# owners test their ordinary bad values in test-*-params.py; this adds the
# extreme ones and minnbd's own options.)

import os
import subprocess
import sys

import nbd

import nbdtest

HUGE = "x" * (120 * 1024)           # near the kernel's 128 KiB per argument
LONG = "y" * 5000                   # longer than NBD_MAX_STRING


def run_server(argv, timeout=20):
    """Start argv in the foreground; return (rc, stderr) or (None, ...) if
    it was still running after the timeout (it accepted the value)."""
    env = dict(os.environ)
    env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_PID", None)
    pre = os.environ.get("SANITIZER_PRELOAD")
    if pre and argv[0] == os.environ.get("NBDKIT", "nbdkit"):
        env["LD_PRELOAD"] = pre
        env["ASAN_OPTIONS"] = "detect_leaks=0"
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return None, err.decode(errors="replace")
    return p.returncode, (err + out).decode(errors="replace")


# Open bugs in the code under test: reported as TODO (XFAIL) until fixed
# (then XPASS fails the run: remove the entry).
KNOWN_BUGS = {
}


class TodoTAP:
    """Wraps TAP.ok: descriptions in KNOWN_BUGS get a TODO directive."""

    def __init__(self, tap):
        self.tap = tap

    def ok(self, cond, desc, diag=None):
        todo = KNOWN_BUGS.get(desc)
        if not todo:
            return self.tap.ok(cond, desc, diag)
        self.tap.n += 1
        print("%s %d - %s # TODO %s" % ("ok" if cond else "not ok",
                                       self.tap.n, desc, todo), flush=True)
        for line in (diag or "").rstrip().splitlines():
            print("# " + line, flush=True)


def check(tap, desc, argv, words):
    tap = TodoTAP(tap)
    rc, err = run_server(argv)
    short = err[-1500:]
    if rc is None:
        tap.ok(False, desc, "accepted: still running after 20 s\n" + short)
    elif rc < 0 or rc >= 128:
        tap.ok(False, desc, "killed by signal %s\n%s" % (-rc if rc < 0
                                                         else rc - 128,
                                                         short))
    elif "AddressSanitizer" in err or "runtime error:" in err or \
            "LeakSanitizer" in err:
        tap.ok(False, desc, "sanitizer report\n" + short)
    elif rc == 0:
        tap.ok(False, desc, "exit status 0\n" + short)
    elif not err.strip():
        tap.ok(False, desc, "exit %d without a message" % rc)
    elif words and not any(w.lower() in err.lower() for w in words):
        tap.ok(False, desc, "message names none of %s:\n%s" % (words, short))
    else:
        tap.ok(True, desc)


def raw_go(path, name):
    """A raw fixed-newstyle NBD_OPT_GO for export `name` (bytes, may hold
    NUL, which libnbd cannot send): the first reply's type (0 if the
    server closed instead, which counts as a refusal too)."""
    import socket
    import struct
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)

    def recv(n):
        b = b""
        while len(b) < n:
            c = s.recv(n - len(b))
            if not c:
                return None
            b += c
        return b
    try:
        if recv(18) is None:
            return 0xffffffff
        payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        s.sendall(struct.pack(">I", 3) +
                  struct.pack(">QII", 0x49484156454f5054, 7, len(payload)) +
                  payload)
        h = recv(20)
        if h is None:
            return 0xffffffff
        magic, opt, rtype, rlen = struct.unpack(">QIII", h)
        recv(rlen)
        # NBD_OPT_ABORT, then close.
        s.sendall(struct.pack(">QII", 0x49484156454f5054, 2, 0))
        return rtype
    except OSError:
        return 0xffffffff
    finally:
        s.close()


def main():
    d = nbdtest.tmpdir()
    sock = os.path.join(d, "s.sock")
    disk = os.path.join(d, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(1024 * 1024)
    store = os.path.join(d, "store")
    minnbd = os.environ["MINNBD"]
    ff = ["flatfile", "file=" + disk]
    longpath = os.path.join(d, "z" * 200, "s.sock")

    # minnbd's own options (backend flatfile, valid file=).
    M = [
        ("-t 0", ["-t", "0"], ["-t", "thread"]),
        ("-t -1", ["-t", "-1"], ["-t", "thread"]),
        ("-t abc", ["-t", "abc"], ["-t", "thread"]),
        ("-t empty", ["-t", ""], ["-t", "thread"]),
        ("-t 2^64", ["-t", "18446744073709551616"], ["-t", "thread"]),
        ("-t 100000", ["-t", "100000"], ["-t", "thread"]),
        ("-p abc", ["-p", "abc"], ["port", "abc"]),
        ("-p 99999", ["-p", "99999"], ["port", "99999"]),
        ("-p empty", ["-p", ""], ["port", "-p"]),
        ("-p huge", ["-p", HUGE], ["port", "-p"]),
        ("-i not-an-address", ["-p", "0", "-i", "not..an..address"],
         ["-i", "address", "not..an..address"]),
        ("-U empty", ["-U", ""], ["-U", "socket"]),
        ("-U longer than sun_path", ["-U", longpath], ["-U", "long",
                                                       "socket"]),
        ("-U in a missing directory", ["-U", d + "/no/such/dir/s"],
         ["no such", "-U"]),
        ("-U and -p together", ["-U", sock, "-p", "0"], ["-U", "-p"]),
        ("-s and -U together", ["-s", "-U", sock], ["-s", "-U"]),
        ("-e longer than 4096", ["-U", sock, "-e", LONG], ["-e", "export",
                                                          "4096"]),
        ("-D longer than 4096", ["-U", sock, "-D", LONG],
         ["-D", "description", "4096"]),
        ("-P in a missing directory", ["-U", sock, "-P",
                                       d + "/no/such/pid"], ["-P", "pid"]),
        ("unknown option", ["--no-such-option"], ["no-such-option",
                                                  "unrecognized",
                                                  "usage"]),
    ]
    # Backend arguments given to minnbd.
    B = [
        ("no backend", [], ["backend", "usage"]),
        ("unknown backend", ["nosuch"], ["nosuch"]),
        ("empty backend name", [""], ["backend"]),
        ("parameter without =", ["flatfile", "file"], ["key=value", "file"]),
        ("parameter with empty key", ["flatfile", "=x"], ["key=value"]),
    ]
    # Plugin parameters, extreme values, under both servers.
    P = [
        ("flatfile", "file= huge", ["file=" + HUGE], ["file", "name too long",
                                                      "no such"]),
        ("flatfile", "readonly= empty", ["file=" + disk, "readonly="],
         ["readonly"]),
        ("flatfile", "readonly= huge", ["file=" + disk, "readonly=" + HUGE],
         ["readonly"]),
        ("cas", "store= huge", ["store=" + HUGE, "size=1M"],
         ["store", "too long", "no such"]),
        ("cas", "size= empty", ["store=" + store, "size="], ["size"]),
        ("cas", "size= huge digits", ["store=" + store,
                                      "size=" + "9" * 4000], ["size"]),
        ("cas", "size=-1", ["store=" + store, "size=-1"], ["size"]),
        ("cas", "size=2^64", ["store=" + store,
                              "size=18446744073709551616"], ["size"]),
        ("cas", "size=1.5M", ["store=" + store, "size=1.5M"], ["size"]),
        ("cas", "size= 1M", ["store=" + store, "size= 1M"], ["size"]),
        ("cas", "blocksize=0", ["store=" + store, "size=1M", "blocksize=0"],
         ["blocksize", "power of two"]),
        ("cas", "blocksize= empty", ["store=" + store, "size=1M",
                                     "blocksize="], ["blocksize"]),
        ("cas", "verify= empty", ["store=" + store, "size=1M", "verify="],
         ["verify"]),
        ("cas", "mapcache= empty", ["store=" + store, "size=1M",
                                    "mapcache="], ["mapcache"]),
        ("cas", "mapcache=0", ["store=" + store, "size=1M", "mapcache=0"],
         ["mapcache", "1M to 1T"]),
        ("cas", "mapcache= huge digits", ["store=" + store, "size=1M",
                                          "mapcache=" + "9" * 4000],
         ["mapcache"]),
        ("cas", "volume= empty", ["store=" + store, "size=1M", "volume="],
         ["volume"]),
        ("cas", "volume= 256 bytes", ["store=" + store, "size=1M",
                                      "volume=" + "v" * 256], ["volume"]),
        ("cas", "volume=a/b", ["store=" + store, "size=1M", "volume=a/b"],
         ["volume"]),
        ("cas", "volume=..", ["store=" + store, "size=1M", "volume=.."],
         ["volume"]),
        ("cas", "volume= control char", ["store=" + store, "size=1M",
                                         "volume=a\x01b"], ["volume"]),
        ("cas", "unknown key, huge", ["store=" + store, "size=1M",
                                      HUGE[:4000] + "=1"],
         ["unknown", "parameter"]),
    ]
    servers = sorted({s for s, _ in nbdtest.pairs()})
    names = ["..", "../store", "a/b", "/etc/passwd", "v" * 300, "x\x01y",
             ".hidden", " "]
    hostile_pairs = nbdtest.pairs(backends=["cas"])
    n = len(M) + len(B) + len(P) * len(servers) + len(hostile_pairs)
    tap = nbdtest.TAP(n)
    nbdtest._watchdog(900)

    for desc, opts, words in M:
        args = opts if "-U" in opts or "-p" in opts or "-s" in opts \
            else ["-U", sock] + opts
        check(tap, "minnbd %s" % desc, [minnbd, "-f"] + args + ff, words)
    for desc, args, words in B:
        check(tap, "minnbd %s" % desc, [minnbd, "-f", "-U", sock] + args,
              words)
    for server in servers:
        for backend, desc, params, words in P:
            if server == "minnbd":
                argv = [minnbd, "-f", "-U", sock, backend] + params
            else:
                argv = [os.environ.get("NBDKIT", "nbdkit"), "-f", "-U",
                        sock, os.environ["%s_PLUGIN" % backend.upper()]] + \
                    params
            check(tap, "%s %s %s" % (server, backend, desc), argv, words)

    # Hostile export names from a client: refused, server keeps serving.
    for s, b in hostile_pairs:
        w = os.path.join(d, "hostile-" + s)
        os.makedirs(w)
        srv = nbdtest.Server(s, b, nbdtest.backend_params(b, w, 1 << 20), w)
        srv.start()
        bad = []
        try:
            for name in names:
                h = nbd.NBD()
                h.set_export_name(name)
                try:
                    h.connect_unix(srv.sock)
                    bad.append("export %r was opened" % name)
                    h.shutdown()
                except nbd.Error:
                    pass
            for name in (b"a\0b", b"\0", b"v" * 5000):
                r = raw_go(srv.sock, name)
                if not r & 0x80000000:
                    bad.append("raw GO %r...: reply 0x%x, not an error" % (
                        name[:8], r))
            h = srv.connect()
            h.pread(512, 0)
            h.shutdown()
            escaped = [p for p in os.listdir(w) if p not in
                       ("store", "nbd.sock", "server.err", "reference")]
            if escaped:
                bad.append("files appeared next to the store: %s" % escaped)
        except Exception as e:
            bad.append("server stopped serving: %s" % e)
        rc = srv.stop()
        log = srv.log()
        if "AddressSanitizer" in log or "runtime error:" in log:
            bad.append("sanitizer report:\n" + log[-1500:])
        if s == "minnbd" and rc != 0:
            bad.append("minnbd exited %s" % rc)
        tap.ok(not bad, "hostile export names refused [%s+%s]" % (s, b),
               "\n".join(bad) + "\n" + log[-1500:])

    import shutil
    shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
