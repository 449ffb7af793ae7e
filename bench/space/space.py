#!/usr/bin/python3
"""The space table (issue 15 item 1): each corpus imported into real cas
stores at several block sizes, measured with `nbdcas stat`, beside the
ideal of exact 4 KiB dedup and offline estimates of compression.

    space.py WORK --nbdcas PATH --chunker PATH [options]

For each corpus (corpus.json: a, b, c) and block size:
  * a store made by `nbdcas create --blocksize BS`; (a) one volume per
    image, (b) one volume imported night after night with `nbdcas
    snapshot` after each import, (c) the same image into ten volumes;
    stored = the store's pack files (`nbdcas stat`: records, headers and
    map nodes included);
  * logical = the sizes of the images kept (volumes and snapshots; the
    volume of (b) is its last snapshot, counted once); data = their
    non-zero 4 KiB blocks (what a sparse copy keeps); ideal = the distinct
    non-zero 4 KiB blocks (exact fixed-block dedup at 4 KiB, no headers);
  * compression, estimated: every distinct chunk the store holds (the
    same cut, from space-chunker) compressed on its own with each codec,
    kept raw unless it shrinks by at least 1/8; the estimate is the
    measured stored bytes with each chunk's payload replaced by that;
  * compression, measured (--real-codecs, at --real-block-sizes): the
    same imports into a store made by `nbdcas create --compression
    CODEC`; its stored bytes from `nbdcas stat`, beside the estimate.
The uncompressed stores are made with `--compression off`, whatever the
default of the build.
Writes WORK/space.json and prints the table in Markdown.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from spacelib import (MiB, Codecs, chunks, image_path, kept, load_corpus,
                      read_at)

DEFAULT_CODECS = "lz4,zstd:1,zstd:3,zstd:9"
DEFAULT_REAL_CODECS = "lz4,zstd:1"


def nbdcas(tool, *args):
    r = subprocess.run([tool] + list(args), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("space.py: nbdcas %s failed (%d):\n%s" %
                 (" ".join(args), r.returncode, r.stderr))
    return r.stdout


def build_store(tool, work, corpus, names, bs, codec="off", fmt=None):
    store = os.path.join(work, "stores", "%s-%d-%s%s" %
                         (corpus, bs, codec, "-v%d" % fmt if fmt else ""))
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(os.path.dirname(store), exist_ok=True)
    nbdcas(tool, "create", store, "--blocksize", str(bs),
           "--compression", codec,
           *(["--format", str(fmt)] if fmt else []))
    t0 = time.time()
    if corpus == "b":
        for i, name in enumerate(names):
            args = ["import", store, "vol", image_path(work, name)]
            nbdcas(tool, *(args + (["--create"] if i == 0 else [])))
            nbdcas(tool, "snapshot", store, "vol", "night%02d" % i)
    else:
        for i, name in enumerate(names):
            nbdcas(tool, "import", store, "vol%02d-%s" % (i, name),
                   image_path(work, name), "--create")
    seconds = time.time() - t0
    st = json.loads(nbdcas(tool, "stat", store, "--json"))
    return store, st, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work")
    ap.add_argument("--nbdcas", required=True)
    ap.add_argument("--chunker", required=True)
    ap.add_argument("--block-sizes", default="4096,16384,65536")
    ap.add_argument("--codecs", default=DEFAULT_CODECS)
    ap.add_argument("--real-codecs", default=DEFAULT_REAL_CODECS)
    ap.add_argument("--real-block-sizes", default="4096,16384,65536")
    ap.add_argument("--corpora", default="a,b,c")
    ap.add_argument("--keep-stores", action="store_true")
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    meta = load_corpus(work)
    sizes = [int(s) for s in a.block_sizes.split(",")]
    codecs = a.codecs.split(",") if a.codecs else []
    real_codecs = a.real_codecs.split(",") if a.real_codecs else []
    real_sizes = [int(s) for s in a.real_block_sizes.split(",") if s]
    cc = Codecs()
    comp_cache = {}           # (hash, length) -> {codec: kept bytes}
    comp_seconds = {c: 0.0 for c in codecs}
    rows = []

    for corpus in a.corpora.split(","):
        names = meta["corpora"][corpus]
        logical = data = 0
        ideal = set()
        for name in names:
            logical += os.path.getsize(image_path(work, name))
            units = chunks(work, a.chunker, name, "fixed", 4096)
            data += 4096 * len(units)
            ideal.update(h for _, _, h in units)
        ideal_bytes = 4096 * len(ideal)
        for bs in sizes:
            print("space: corpus %s, %d KiB blocks ..." % (corpus, bs // 1024),
                  file=sys.stderr, flush=True)
            store, st, secs = build_store(a.nbdcas, work, corpus, names, bs)
            # The same cut offline: the distinct data chunks the store holds.
            distinct = {}
            for name in names:
                for off, length, h in chunks(work, a.chunker, name, "fixed", bs):
                    distinct.setdefault(h, (name, off))
            # Referenced ones: two import threads that store the same new
            # block at once each append a copy (FORMAT.md: the second is
            # garbage for nbdcas gc), counted in stored, not here.
            data_chunks = st["referenced_chunks"] - st["map_nodes"]
            if data_chunks != len(distinct):
                print("space: warning: corpus %s at %d: volumes reference %d "
                      "data chunks, the offline cut has %d" %
                      (corpus, bs, data_chunks, len(distinct)), file=sys.stderr)
            payload = bs * len(distinct)
            comp = {c: 0 for c in codecs}
            for h, (name, off) in distinct.items():
                key = (h, bs)
                got = comp_cache.get(key)
                if got is None or any(c not in got for c in codecs):
                    buf = read_at(image_path(work, name), off, bs)
                    got = {}
                    for c in codecs:
                        t = time.time()
                        got[c] = kept(bs, cc.compress(c, buf))
                        comp_seconds[c] += time.time() - t
                    comp_cache[key] = got
                for c in codecs:
                    comp[c] += got[c]
            row = {
                "corpus": corpus, "images": len(names), "block_size": bs,
                "logical": logical, "data": data, "ideal": ideal_bytes,
                "stored": st["stored_bytes"], "chunks": len(distinct),
                "map_nodes": st["map_nodes"], "payload": payload,
                "unreferenced": st["unreferenced_bytes"],
                "import_seconds": round(secs, 1),
                "compressed": {c: st["stored_bytes"] - payload + comp[c]
                               for c in codecs},
                "real": {},
            }
            rows.append(row)
            if not a.keep_stores:
                shutil.rmtree(store)
            if bs not in real_sizes:
                continue
            for c in real_codecs:
                print("space: corpus %s, %d KiB blocks, %s ..." %
                      (corpus, bs // 1024, c), file=sys.stderr, flush=True)
                store, cst, secs = build_store(a.nbdcas, work, corpus, names,
                                               bs, c)
                row["real"][c] = {
                    "stored": cst["stored_bytes"],
                    "unreferenced": cst["unreferenced_bytes"],
                    "data_chunks": cst["data_chunks"],
                    "compressed_chunks": cst["compressed_chunks"],
                    "data_raw": cst["data_raw_bytes"],
                    "data_stored": cst["data_stored_bytes"],
                    "import_seconds": round(secs, 1),
                }
                if not a.keep_stores:
                    shutil.rmtree(store)

    out = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "load": os.getloadavg(), "corpus_built": meta["built"],
           "codecs": codecs, "real_codecs": real_codecs, "rows": rows,
           "compress_seconds": {c: round(s, 1) for c, s in comp_seconds.items()}}
    with open(os.path.join(work, "space.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(table(out))


def table(out):
    codecs = out["codecs"]
    head = ["corpus", "block", "logical MiB", "data MiB", "ideal MiB",
            "stored MiB", "of which unref. MiB", "stored/ideal", "data/stored"]
    head += ["%s MiB (data/stored)" % c for c in codecs]
    real_codecs = out.get("real_codecs", [])
    head += ["real %s MiB (data/stored)" % c for c in real_codecs]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in out["rows"]:
        cells = ["(%s) %d images" % (r["corpus"], r["images"]),
                 "%d KiB" % (r["block_size"] // 1024),
                 "%.0f" % (r["logical"] / MiB), "%.1f" % (r["data"] / MiB),
                 "%.1f" % (r["ideal"] / MiB), "%.1f" % (r["stored"] / MiB),
                 "%.1f" % (r["unreferenced"] / MiB),
                 "%.2f" % (r["stored"] / r["ideal"]),
                 "%.2f" % (r["data"] / r["stored"])]
        for c in codecs:
            v = r["compressed"][c]
            cells.append("%.1f (%.2f)" % (v / MiB, r["data"] / v))
        for c in real_codecs:
            got = r.get("real", {}).get(c)
            cells.append("-" if got is None else "%.1f (%.2f)" %
                         (got["stored"] / MiB, r["data"] / got["stored"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
