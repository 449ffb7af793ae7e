#!/usr/bin/python3
# nbdinfo (libnbd-bin): --json, --list, --map (--totals, --json), --size,
# --can / --is, and nbdinfo spawning the server itself with socket
# activation (`nbdinfo -- [ server ... ]`).  For minnbd, every answer
# must agree with nbdkit's for the same backend and data.

import json

import nbdtest

SIZE = 64 * 1024 * 1024
MiB = 1024 * 1024
DATA = [(0, 2 * MiB), (8 * MiB, 1 * MiB), (20 * MiB, 4 * MiB),
        (SIZE - MiB, MiB)]


def merged(extents):
    out = []
    for e in extents:
        if out and out[-1]["type"] == e["type"] and \
                out[-1]["offset"] + out[-1]["length"] == e["offset"]:
            out[-1]["length"] += e["length"]
        else:
            out.append({"offset": e["offset"], "length": e["length"],
                        "type": e["type"]})
    return out


def nbdinfo(args, check=True):
    return nbdtest.cmd(["nbdinfo"] + args, check=check)


def gather(srv):
    """What nbdinfo says about the server."""
    uri = srv.uri()
    info = json.loads(nbdinfo(["--json", uri]).stdout)
    lst = json.loads(nbdinfo(["--list", "--json", uri]).stdout)
    mp = json.loads(nbdinfo(["--map", "--json", uri]).stdout)
    totals = nbdinfo(["--map", "--totals", uri]).stdout
    return info, lst, mp, totals


def comparable(info):
    e = dict(info["exports"][0])
    for k in ("uri", "block_size_maximum"):
        e.pop(k, None)
    return {"protocol": info["protocol"], "structured": info["structured"],
            "export": e}


def body(srv):
    h = srv.connect()
    for i, (off, ln) in enumerate(DATA):
        h.pwrite(nbdtest.random_bytes(ln, i), off)
    h.flush()
    h.shutdown()

    info, lst, mp, totals = gather(srv)
    assert info["protocol"] == "newstyle-fixed", info
    assert info["structured"] is True, info
    assert len(info["exports"]) == 1, info
    e = info["exports"][0]
    assert e["export-size"] == SIZE, e
    assert "base:allocation" in e["contexts"], e
    assert e["is_read_only"] is False, e
    for cap in ("can_flush", "can_fua", "can_trim", "can_zero", "can_df"):
        assert e[cap] is True, "%s: %r" % (cap, e)

    # --list: the default export is listed (by its canonical name).
    names = [x["export-name"] for x in lst["exports"]]
    assert names, "nbdinfo --list: no exports: %r" % lst
    assert e["export-name"] in names or "" in names, \
        "default export %r not in list %r" % (e["export-name"], names)
    for x in lst["exports"]:
        assert x["export-size"] > 0, x

    # --map: contiguous from 0 to the size; data where we wrote it, zero
    # in the big gaps between.
    assert mp and mp[0]["offset"] == 0, mp
    for a, b in zip(mp, mp[1:]):
        assert a["offset"] + a["length"] == b["offset"], "gap: %r" % mp
    assert mp[-1]["offset"] + mp[-1]["length"] == SIZE, mp

    def types(off, ln):
        return {x["type"] for x in mp
                if x["offset"] < off + ln and off < x["offset"] + x["length"]}
    for (off, ln) in DATA:
        assert types(off, ln) == {0}, "data %d@%d mapped %r" % (
            ln, off, types(off, ln))
    for (off, ln) in [(3 * MiB, 4 * MiB), (10 * MiB, 9 * MiB),
                      (25 * MiB, 30 * MiB)]:
        assert all(t & 2 for t in types(off, ln)), \
            "gap %d@%d mapped %r" % (ln, off, types(off, ln))
    assert "zero" in totals and "data" in totals, totals

    # Single answers and exit codes.
    assert nbdinfo(["--size", srv.uri()]).stdout.strip() == str(SIZE)
    assert nbdinfo(["--can", "flush", srv.uri()], check=False).returncode == 0
    assert nbdinfo(["--can", "trim", srv.uri()], check=False).returncode == 0
    assert nbdinfo(["--is", "read-only", srv.uri()],
                   check=False).returncode == 2

    # nbdinfo starting the server itself (socket activation).
    srv.stop()
    env = nbdtest._sanitizer_env({}, srv.server)
    p = nbdtest.cmd(["nbdinfo", "--json", "--"] + ["["] + srv.argv() + ["]"],
                    env=env)
    spawned = json.loads(p.stdout)
    assert spawned["exports"][0]["export-size"] == SIZE, spawned
    srv.start()

    # minnbd agrees with nbdkit serving the same backend and data.
    if srv.server == "minnbd":
        ref = nbdtest.with_reference(srv, gather)
        assert comparable(info) == comparable(ref[0]), \
            "nbdinfo --json:\nminnbd %r\nnbdkit %r" % (comparable(info),
                                                      comparable(ref[0]))
        rn = sorted(x["export-name"] for x in ref[1]["exports"])
        assert sorted(names) == rn, "--list: minnbd %r, nbdkit %r" % (
            names, rn)
        assert merged(mp) == merged(ref[2]), \
            "--map:\nminnbd %r\nnbdkit %r" % (merged(mp), merged(ref[2]))
        assert totals == ref[3], "--map --totals:\n%s\n%s" % (totals, ref[3])


nbdtest.require_tool("nbdinfo")
nbdtest.run("nbdinfo --json/--list/--map", body, size=SIZE)
