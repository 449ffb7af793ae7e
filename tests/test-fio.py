#!/usr/bin/python3
# fio ioengine=nbd (each job is its own NBD connection): 4 randrw jobs at
# queue depth 32 with verify=crc32c in disjoint regions, a random-size
# randwrite job and a sequential write job with fsync (FLUSH), all at
# once; then, after a server restart, a verify-only pass over what the
# write jobs wrote.

import json
import os

import nbdtest

SIZE = 64 * 1024 * 1024

JOBS = """
[global]
ioengine=nbd
uri={uri}
verify_fatal=1
randrepeat=1
group_reporting=0

[randrw]
rw=randrw
bs=4k
iodepth=32
numjobs=4
size=8M
offset=0
offset_increment=8M
verify=crc32c

[randwrite]
rw=randwrite
bsrange=4k-256k
iodepth=16
offset=32M
size=16M
verify=crc32c

[seqfsync]
rw=write
bs=1M
iodepth=4
fsync=4
offset=48M
size=16M
verify=md5
"""


def fio(jobfile, extra=()):
    p = nbdtest.cmd(["fio", "--output-format=json"] + list(extra) +
                    [jobfile], timeout=600, check=False,
                    cwd=os.path.dirname(jobfile))
    try:
        out = json.loads(p.stdout[p.stdout.index("{"):])
    except ValueError:
        raise AssertionError("fio rc %d, no JSON:\n%s\n%s" % (
            p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    bad = [(j["jobname"], j["error"]) for j in out["jobs"] if j["error"]]
    assert p.returncode == 0 and not bad, \
        "fio rc %d, job errors %r\n%s" % (p.returncode, bad,
                                           p.stderr[-3000:])
    return out


def body(srv):
    jobfile = os.path.join(srv.workdir, "jobs.fio")
    with open(jobfile, "w") as f:
        f.write(JOBS.format(uri=srv.uri()))
    out = fio(jobfile)
    names = sorted(j["jobname"] for j in out["jobs"])
    assert names == ["randrw"] * 4 + ["randwrite", "seqfsync"], names
    written = sum(j["write"]["io_bytes"] for j in out["jobs"])
    assert written >= 32 * 1024 * 1024, "fio wrote only %d bytes" % written
    verified = [j for j in out["jobs"] if j["read"]["io_bytes"] > 0]
    assert len(verified) == 6, "some jobs read nothing back: %r" % [
        (j["jobname"], j["read"]["io_bytes"]) for j in out["jobs"]]

    # Everything the write jobs wrote is still there after a restart.
    srv.restart()
    out = fio(jobfile, ["--verify_only", "--section=randwrite",
                        "--section=seqfsync"])
    assert sum(j["read"]["io_bytes"] for j in out["jobs"]) >= \
        16 * 1024 * 1024, "verify-only pass read too little"


nbdtest.require_tool("fio")
p = nbdtest.cmd(["fio", "--enghelp=nbd"], check=False)
if p.returncode != 0:
    nbdtest.skip_all("fio lacks the nbd ioengine")
nbdtest.run("fio ioengine=nbd randrw verify", body, size=SIZE)
