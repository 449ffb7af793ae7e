#!/usr/bin/python3
# minnbd's exports: -e names the single export of a backend without a
# list (flatfile), reachable as that name or as the default export "";
# -D describes it (NBD_OPT_LIST, NBD_INFO_DESCRIPTION); other names are
# unknown.  A backend with a list (cas volumes) is listed and served by
# name exactly as nbdkit lists and serves it.

import nbd
import nbdtest

SIZE = 16 * 1024 * 1024


def listing(srv):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_unix(srv.sock)
    out = []
    h.opt_list(lambda name, desc: out.append((name, desc)) or 0)
    h.opt_abort()
    return sorted(out)


def info(srv, name):
    """(canonical name, description, size) from NBD_OPT_INFO."""
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.set_full_info(True)
    h.set_export_name(name)
    h.connect_unix(srv.sock)
    h.opt_info()
    try:
        desc = h.get_export_description()
    except nbd.Error:
        desc = None             # the server sent none
    r = (h.get_canonical_export_name(), desc, h.get_size())
    h.opt_abort()
    return r


def refused(srv, name):
    try:
        h = srv.connect(name)
    except nbd.Error:
        return True
    h.shutdown()
    return False


def body_named(srv):
    assert listing(srv) == [("disk1", "my first disk")], listing(srv)
    for name in ("", "disk1"):
        assert info(srv, name) == ("disk1", "my first disk", SIZE), \
            info(srv, name)
        h = srv.connect(name)
        h.pwrite(b"named", 0)
        assert h.pread(5, 0) == b"named"
        h.shutdown()
    for name in ("disk2", "DISK1", "disk1 ", "x" * 4096):
        assert refused(srv, name), "export %r was accepted" % name[:20]
    # The server is unharmed by the refusals.
    assert srv.connect("disk1").get_size() == SIZE


def body_default(srv):
    assert listing(srv) == [("", "")], listing(srv)
    assert info(srv, "")[0] == ""
    assert refused(srv, "anything")


def body_listed(srv):
    # Make a second volume through the backend (cas creates a volume on
    # first write to a new export name, or refuses: either way the list
    # must match nbdkit's).
    try:
        h = srv.connect("second")
        h.pwrite(b"2nd", 0)
        h.flush()
        h.shutdown()
    except nbd.Error:
        pass
    mine = listing(srv)
    ref = nbdtest.with_reference(srv, listing)
    assert mine == ref, "minnbd lists %r, nbdkit %r" % (mine, ref)
    for name, desc in mine:
        assert info(srv, name)[0] == name, (name, info(srv, name))
    dflt = info(srv, "")
    ref_dflt = nbdtest.with_reference(srv, lambda r: info(r, ""))
    assert dflt == ref_dflt, "default export: minnbd %r, nbdkit %r" % (
        dflt, ref_dflt)


def body(srv):
    if srv.backend == "flatfile":
        body_default(srv)
        # The same disk, named and described, on a second server.
        import os
        d = os.path.join(srv.workdir, "named")
        os.makedirs(d, exist_ok=True)
        srv2 = nbdtest.Server("minnbd", "flatfile", srv.params, d,
                              extra=["-e", "disk1", "-D",
                                     "my first disk"]).start()
        try:
            body_named(srv2)
        finally:
            rc = srv2.stop()
        assert rc == 0, "named server exited %s:\n%s" % (rc, srv2.log())
    else:
        body_listed(srv)


nbdtest.run("minnbd exports", body, servers=["minnbd"], size=SIZE)
