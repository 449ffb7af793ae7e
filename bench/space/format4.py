#!/usr/bin/python3
"""Format version 4 against the 4 KiB ideal (issue 15 item 3).

    format4.py WORK --nbdcas PATH --chunker PATH [--corpora a,b,c]
               [--codecs off,lz4] [--block-size 65536] [--with-v2]

Imports each corpus (as space.py does: (a) one volume per image, (b) one
volume night after night with a snapshot after each, (c) one image into
ten volumes) into a store made by `nbdcas create --format 4`, and prints
stored bytes (`nbdcas stat`: pack files, everything included), the ideal
(distinct non-zero 4 KiB blocks), their ratio and the import time; with
--with-v2 also the same imports into a version-2 store for comparison.
The corpus is space.py's (corpus.py builds it).
"""

import argparse
import os
import shutil
import sys

from space import build_store
from spacelib import MiB, chunks, image_path, load_corpus


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work")
    ap.add_argument("--nbdcas", required=True)
    ap.add_argument("--chunker", required=True)
    ap.add_argument("--corpora", default="a,b,c")
    ap.add_argument("--codecs", default="off,lz4")
    ap.add_argument("--block-size", type=int, default=65536)
    ap.add_argument("--with-v2", action="store_true")
    ap.add_argument("--keep-stores", action="store_true")
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    meta = load_corpus(work)
    print("| corpus | store | logical MiB | data MiB | ideal MiB | "
          "stored MiB | stored/ideal | import s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
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
        runs = [(4, c) for c in a.codecs.split(",")]
        if a.with_v2:
            runs.insert(0, (None, "off"))
        for fmt, codec in runs:
            print("format4: corpus %s, format %s, %s ..." %
                  (corpus, fmt or 2, codec), file=sys.stderr, flush=True)
            store, st, secs = build_store(a.nbdcas, work, corpus, names,
                                          a.block_size, codec, fmt)
            print("| (%s) %d images | v%d %d KiB %s | %.0f | %.1f | %.1f | "
                  "%.1f | %.2f | %.1f |" %
                  (corpus, len(names), fmt or 2, a.block_size // 1024, codec,
                   logical / MiB, data / MiB, ideal_bytes / MiB,
                   st["stored_bytes"] / MiB,
                   st["stored_bytes"] / ideal_bytes, secs), flush=True)
            if not a.keep_stores:
                shutil.rmtree(store)


if __name__ == "__main__":
    main()
