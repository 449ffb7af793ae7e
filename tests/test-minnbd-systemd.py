#!/usr/bin/python3
# minnbd's systemd units (issue 16 item 4), as `make install` puts them,
# run the way systemd would run them, with systemd-socket-activate
# (package systemd; no running systemd needed):
#
#   make -C common/server install DESTDIR=TMP
#   TMP/.../minnbd@.socket   ListenStream=/run/minnbd/%i.sock, Accept=no
#   TMP/.../minnbd@.service  EnvironmentFile=/etc/minnbd/%i.conf,
#                            ExecStart=BINDIR/minnbd --log=syslog $MINNBD_ARGS
#
# The test instantiates NAME, writes NAME.conf, takes ExecStart from the
# installed service (the binary from DESTDIR, $MINNBD_ARGS split on white
# space as systemd does), moves the socket from /run/minnbd to a
# temporary directory, and runs
#   systemd-socket-activate -l SOCKET -- EXECSTART...
# which listens, and on the first connection execs minnbd with the
# socket (LISTEN_FDS=1).  A client then reads and writes; SIGTERM stops
# minnbd cleanly (exit 0).

import os
import shutil
import signal
import subprocess
import sys
import traceback

import nbd
import nbdtest

SIZE = 16 * 1024 * 1024


def parse_unit(path):
    """{(section, key): [values]} of a unit file."""
    out = {}
    section = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            k, _, v = line.partition("=")
            out.setdefault((section, k.strip()), []).append(v.strip())
    return out


def find(root, name):
    for dirpath, _, files in os.walk(root):
        if name in files:
            return os.path.join(dirpath, name)
    raise AssertionError("make install did not install %s" % name)


def main():
    if not nbdtest.pairs(["minnbd"], ["flatfile"]):
        nbdtest.skip_all("minnbd-flatfile is not selected")
    activate = nbdtest.require_tool("systemd-socket-activate")
    top = os.environ.get("top_builddir")
    if not top:
        nbdtest.skip_all("top_builddir is not set")
    tap = nbdtest.TAP(3)
    nbdtest._watchdog(int(os.environ.get("NBDCAS_TEST_TIMEOUT", "900")))
    d = nbdtest.tmpdir()
    proc = None
    try:
        dest = os.path.join(d, "dest")
        p = nbdtest.cmd([os.environ.get("MAKE", "make"), "-s", "-C",
                         os.path.join(top, "common", "server"), "install",
                         "DESTDIR=" + dest])
        sock_unit = parse_unit(find(dest, "minnbd@.socket"))
        svc_unit = parse_unit(find(dest, "minnbd@.service"))
        tap.ok(sock_unit.get(("Socket", "ListenStream")) ==
               ["/run/minnbd/%i.sock"] and
               sock_unit.get(("Socket", "Accept")) == ["no"] and
               sock_unit.get(("Install", "WantedBy")) == ["sockets.target"]
               and svc_unit.get(("Unit", "Requires")) ==
               ["minnbd@%i.socket"] and
               svc_unit.get(("Service", "EnvironmentFile")) ==
               ["/etc/minnbd/%i.conf"],
               "make install puts minnbd@.socket and minnbd@.service in "
               "the unit directory", "%r\n%r" % (sock_unit, svc_unit))

        # Instance "disk1": its settings file and socket.
        name = "disk1"
        disk = os.path.join(d, "disk1.img")
        with open(disk, "wb") as f:
            f.truncate(SIZE)
        conf = os.path.join(d, name + ".conf")
        with open(conf, "w") as f:
            f.write('# /etc/minnbd/disk1.conf\nMINNBD_ARGS="flatfile '
                    'file=%s"\n' % disk)
        env_vars = {}
        with open(conf) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    k, _, v = line.partition("=")
                    env_vars[k] = v.strip('"')
        sock = sock_unit[("Socket", "ListenStream")][0] \
            .replace("%i", name).replace("/run/minnbd", d)
        argv = []
        for word in svc_unit[("Service", "ExecStart")][0].split():
            if word.startswith("$"):
                argv += env_vars[word[1:]].split()
            elif word.startswith("/"):
                argv.append(dest + word)      # the installed binary
            else:
                argv.append(word.replace("%i", name))
        proc = subprocess.Popen([activate, "-l", sock, "--"] + argv,
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                env=nbdtest.tool_env())
        nbdtest.wait_until(lambda: os.path.exists(sock),
                           "systemd-socket-activate to listen on " + sock)
        try:
            out = nbdtest.cmd(["nbdinfo", "--size",
                               "nbd+unix:///?socket=" + sock])
            h = nbd.NBD()
            h.connect_unix(sock)
            data = nbdtest.random_bytes(65536, 7)
            h.pwrite(data, 1 << 20)
            h.flush()
            assert h.pread(65536, 1 << 20) == data
            h.shutdown()
            with open(disk, "rb") as f:
                f.seek(1 << 20)
                assert f.read(65536) == data
            tap.ok(out.stdout.strip() == str(SIZE),
                   "systemd-socket-activate runs the service's ExecStart "
                   "on the socket's address; clients are served",
                   out.stdout)
        except Exception:
            tap.ok(False, "systemd-socket-activate runs the service's "
                   "ExecStart on the socket's address; clients are served",
                   traceback.format_exc())
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        log = proc.stdout.read().decode(errors="replace")
        proc = None
        tap.ok(rc == 0, "SIGTERM (systemctl stop) ends minnbd cleanly",
               "exit status %s\n%s" % (rc, log))
    except nbdtest.Skip as e:
        nbdtest.skip_all(str(e))
    except Exception:
        tap.ok(False, "systemd units", traceback.format_exc())
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)
    sys.exit(1 if tap.failed else 0)


main()
