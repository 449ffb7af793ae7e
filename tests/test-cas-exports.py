#!/usr/bin/python3
# cas: export names select volumes; the list shows them; a name that could
# escape the store (slashes, "..", leading dot, control characters, over
# 255 bytes) is refused, an unknown one too, and the server goes on.

import os

import nbd
import nbdtest

MiB = 1024 * 1024

HOSTILE = ["../x", "..", "a/b", "/etc/passwd", ".hidden", "x\x01y",
           "tab\there", "del\x7f", "a" * 256, "../../../../tmp/evil"]


def refused(srv, name):
    try:
        h = srv.connect(name)
    except nbd.Error:
        return True
    h.shutdown()
    return False


def body(srv):
    store = os.path.join(srv.workdir, "store")
    h = srv.connect()
    h.pwrite(b"default!", 0)
    h.flush()
    h.shutdown()
    # A second volume.
    srv.stop()
    srv.params.append("volume=second")
    srv.start()
    h = srv.connect("second")
    h.pwrite(b"second!!", 0)
    h.flush()
    h.shutdown()

    # Export names select volumes; "" is the default volume (volume=).
    for name, want in [("default", b"default!"), ("second", b"second!!"),
                       ("", b"second!!")]:
        h = srv.connect(name)
        assert h.pread(8, 0) == want, "export %r" % name
        h.shutdown()

    # NBD_OPT_LIST.
    names = set()
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(srv.sock)
    h.opt_list(lambda name, desc: names.add(name) or 0)
    h.opt_abort()
    assert {"default", "second"} <= names, names

    for name in HOSTILE:
        assert refused(srv, name), "hostile export %r accepted" % name
    assert refused(srv, "nosuch"), "unknown export accepted"
    assert refused(srv, "b" * 255), "unknown long export accepted"
    log = srv.log()
    assert "invalid volume name" in log, log
    assert "no volume named 'nosuch'" in log, log
    # Nothing escaped the store.
    assert not os.path.exists(os.path.join(srv.workdir, "x"))
    assert sorted(os.listdir(os.path.join(store, "volumes"))) == \
        ["default", "second"], os.listdir(os.path.join(store, "volumes"))

    # The server still serves.
    h = srv.connect()
    assert h.pread(8, 0) == b"second!!"
    h.shutdown()


nbdtest.run("cas export names and volumes", body, backends=["cas"],
            size=4 * MiB)
