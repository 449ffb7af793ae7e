#!/usr/bin/env python3
# flatfile: every bad parameter stops the server at start-up with a message
# naming the parameter and what is allowed, and a non-zero exit status.
# Runs each case on every server that serves flatfile (nbdkit, minnbd).

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.environ.get("srcdir", os.path.dirname(__file__)))
import nbdtest  # noqa: E402

NOBODY = 65534


def server_argv(server, sock, params):
    if server == "nbdkit":
        return [os.environ.get("NBDKIT", "nbdkit"), "-f", "-U", sock,
                os.environ["FLATFILE_PLUGIN"]] + params
    return [os.environ["MINNBD"], "-f", "-U", sock, "flatfile"] + params


def run_server(server, sock, params, prefix=()):
    """Start the server; it must exit by itself (a config error)."""
    env = nbdtest._sanitizer_env(dict(os.environ), server)
    try:
        p = subprocess.run(list(prefix) + server_argv(server, sock, params),
                           env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=20)
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"").decode(errors="replace")
        if server == "nbdkit" and os.environ.get("SANITIZER_PRELOAD") and \
           "error" in err:
            # nbdkit with the ASan runtime preloaded can hang in exit()
            # (libp11-kit's destructor, see nbdtest.Server.stop) after it
            # has reported the error: the refusal itself happened.
            return 1, err
        return None, "server still running after 20 s: parameters " \
            "accepted?\n" + err
    return p.returncode, p.stderr.decode(errors="replace")


def can_run_as_nobody(server):
    """The 'permission denied' case drops root; the build tree must be
    readable by nobody for that (it may not be, under /root)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    exe = os.environ["FLATFILE_PLUGIN"] if server == "nbdkit" \
        else os.environ["MINNBD"]
    r = subprocess.run(["setpriv", "--reuid=%d" % NOBODY,
                        "--regid=%d" % NOBODY, "--clear-groups",
                        "test", "-r", exe], stdin=subprocess.DEVNULL)
    return r.returncode == 0


def main():
    servers = [s for s, _ in nbdtest.pairs(backends=["flatfile"])]
    d = nbdtest.tmpdir()
    os.chmod(d, 0o755)          # nobody must reach the files in it
    disk = os.path.join(d, "disk.img")
    other = os.path.join(d, "other.img")
    noperm = os.path.join(d, "noperm.img")
    for f in (disk, other, noperm):
        with open(f, "wb") as fh:
            fh.truncate(1024 * 1024)
    os.chmod(noperm, 0)
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo)

    # (description, params, words the message must contain)
    cases = [
        ("no file=", [], ["file=", "required"]),
        ("missing file", ["file=" + d + "/missing.img"],
         ["missing.img", "no such file"]),
        ("a directory", ["file=" + d], ["directory"]),
        ("empty file=", ["file="], ["file=", "empty"]),
        ("file= twice", ["file=" + disk, "file=" + other], ["twice"]),
        ("a fifo", ["file=" + fifo], ["regular file", "block device"]),
        ("bad readonly=", ["file=" + disk, "readonly=maybe"],
         ["readonly", "maybe", "true/false"]),
        ("unknown key", ["file=" + disk, "colour=blue"],
         ["colour", "file=", "readonly="]),
        ("no permission", ["file=" + noperm], ["noperm.img",
                                               "permission denied"]),
    ]

    tap = nbdtest.TAP(len(cases) * len(servers))
    try:
        for server in servers:
            for desc, params, words in cases:
                name = "flatfile bad parameter: %s [%s+flatfile]" % (
                    desc, server)
                prefix = ()
                if desc == "no permission":
                    if os.geteuid() == 0:
                        if not can_run_as_nobody(server):
                            tap.skip(name, "cannot drop root to test "
                                     "permissions here")
                            continue
                        prefix = ("setpriv", "--reuid=%d" % NOBODY,
                                  "--regid=%d" % NOBODY, "--clear-groups")
                sock = os.path.join(d, "s.sock")
                rc, err = run_server(server, sock, params, prefix)
                lower = err.lower()
                missing = [w for w in words if w.lower() not in lower]
                ok = rc is not None and rc != 0 and not missing
                tap.ok(ok, name, "exit status %s, words missing %s, "
                       "stderr:\n%s" % (rc, missing, err))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
