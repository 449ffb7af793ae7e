#!/usr/bin/python3
# Handshake: size, transmission flags, protocol, export name and list,
# block size info, meta contexts -- the same on every (server, backend)
# pair, and minnbd presenting each backend exactly as nbdkit does.

import nbd
import nbdtest

SIZE = 64 * 1024 * 1024


def facts(srv):
    """What a client learns in the handshake (libnbd's view)."""
    h = srv.connect(full_info=True)
    f = {
        "size": h.get_size(),
        "protocol": h.get_protocol(),
        "structured_replies": h.get_structured_replies_negotiated(),
        "read_only": h.is_read_only(),
        "flush": h.can_flush(),
        "fua": h.can_fua(),
        "trim": h.can_trim(),
        "zero": h.can_zero(),
        "fast_zero": h.can_fast_zero(),
        "df": h.can_df(),
        "multi_conn": h.can_multi_conn(),
        "cache": h.can_cache(),
        "rotational": h.is_rotational(),
        "base_allocation": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
        "block_min": h.get_block_size(nbd.SIZE_MINIMUM),
        "block_pref": h.get_block_size(nbd.SIZE_PREFERRED),
        "block_max": h.get_block_size(nbd.SIZE_MAXIMUM),
        "canonical_name": h.get_canonical_export_name(),
    }
    h.shutdown()
    return f


def pow2(n):
    return n > 0 and n & (n - 1) == 0


def body(srv):
    f = facts(srv)
    assert f["size"] == SIZE, "size %d, want %d" % (f["size"], SIZE)
    assert f["protocol"] == "newstyle-fixed", f["protocol"]
    assert f["structured_replies"], "structured replies not negotiated"
    assert f["base_allocation"], "base:allocation not negotiated"
    assert not f["read_only"], "writable export reported read-only"
    for cap in ("flush", "fua", "trim", "zero", "df"):
        assert f[cap], "%s not advertised: %r" % (cap, f)
    if srv.backend == "flatfile":
        assert f["multi_conn"], "flatfile: multi-conn not advertised"
    if srv.backend == "flatfile":
        assert f["canonical_name"] == "", \
            "flatfile: default export named %r" % f["canonical_name"]

    # Block size constraints: absent (all 0) or coherent.
    mn, pref, mx = f["block_min"], f["block_pref"], f["block_max"]
    if mn or pref or mx:
        assert pow2(mn) and mn <= 65536, "minimum block size %d" % mn
        assert pow2(pref) and pref >= mn and pref <= 32 * 1024 * 1024, \
            "preferred block size %d (min %d)" % (pref, mn)
        assert mx >= pref and (mx % mn == 0 or mx == 0xffffffff), \
            "maximum block size %d (min %d pref %d)" % (mx, mn, pref)
        # Odd offsets and lengths must work for every client (the read /
        # write tests use 1-byte granularity): a backend does its own
        # read-modify-write.
        assert mn == 1, "minimum block size %d > 1" % mn
    if srv.server == "minnbd":
        # minnbd always sends NBD_INFO_BLOCK_SIZE, max payload >= 32 MiB.
        assert mn >= 1, "minnbd sent no NBD_INFO_BLOCK_SIZE"
        assert mx >= 32 * 1024 * 1024, "minnbd max payload %d < 32 MiB" % mx

    # Option haggling: LIST shows the default export, INFO then GO.
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_unix(srv.sock)
    names = []
    h.opt_list(lambda name, desc: names.append(name) or 0)
    # The default export is listed, by its name ("" or the canonical
    # name the server gives it, e.g. a cas volume's).
    assert f["canonical_name"] in names or "" in names, \
        "NBD_OPT_LIST: %r lacks the default export (%r)" % (
            names, f["canonical_name"])
    h.set_export_name("")
    h.opt_info()
    assert h.get_size() == SIZE, "NBD_OPT_INFO size %d" % h.get_size()
    info_ro = h.is_read_only()
    h.opt_go()
    assert h.get_size() == SIZE and h.is_read_only() == info_ro, \
        "NBD_OPT_GO disagrees with NBD_OPT_INFO"
    assert h.pread(512, SIZE - 512) == bytes(512)
    h.shutdown()

    # Old-fashioned clients: no fixed newstyle (NBD_OPT_EXPORT_NAME), no
    # NO_ZEROES, no structured replies.
    for hf in (0, nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE):
        h = nbd.NBD()
        h.set_handshake_flags(hf)
        h.set_request_structured_replies(False)
        h.connect_unix(srv.sock)
        assert h.get_size() == SIZE, "size %d (handshake flags %d)" % (
            h.get_size(), hf)
        assert not h.get_structured_replies_negotiated()
        h.pwrite(b"x" * 4096, 8192)
        assert h.pread(4096, 8192) == b"x" * 4096
        h.flush()
        h.shutdown()

    # Many connect/disconnect cycles: nothing accumulates, nothing breaks.
    for i in range(50):
        h = srv.connect()
        assert h.get_size() == SIZE
        h.shutdown()
        del h

    # minnbd presents each backend as nbdkit (the reference) does.
    if srv.server == "minnbd":
        ref = nbdtest.with_reference(srv, facts)
        for k in f:
            if k in ("block_min", "block_pref", "block_max"):
                continue  # nbdkit 1.32 may not send block size info
            assert f[k] == ref[k], "%s: minnbd %r, nbdkit %r" % (
                k, f[k], ref[k])
        if ref["block_min"]:
            assert (mn, pref) == (ref["block_min"], ref["block_pref"]), \
                "block sizes: minnbd %d/%d, nbdkit %d/%d" % (
                    mn, pref, ref["block_min"], ref["block_pref"])


nbdtest.run("handshake", body, size=SIZE)
