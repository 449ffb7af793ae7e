#!/usr/bin/python3
"""Fine-grained dedup, the design study (issue 15 item 3): a model of the
store run over the corpus images, for several designs.

    sim.py WORK --chunker PATH [--corpora a,b,c] [--codecs lz4,zstd:1,...]

Every design sees the corpus as the store does: each image written into
its volume in offset order ((a) and (c): a new volume per image; (b): the
same volume night after night), all-zero 4 KiB blocks never stored.
Measured per design: stored bytes of data (payload only: headers and maps
are counted separately in the text), index entries and index RAM per
stored 64 KiB, manifest reads (the extra reads of the write path), and
the fragmentation of reads (distinct stored extents one 64 KiB read of
the last image of each volume touches).

Designs:
  fixed-X    today's store: aligned X-byte blocks, a full index
  full-4K    4 KiB units, a full index (exact: the ideal, plus headers)
  cdc-X      content-defined chunks of average X, a full index
  sparse     4 KiB units packed into 64 KiB extents; the index holds only
             hooks (units whose hash is 0 mod S) -> the manifests that
             hold them; a write finds duplicates in the manifests its
             hooks vote for (champions, read from disk unless cached), in
             a bounded cache of recently used manifests, and in the
             manifests of what its volume held at the same place before
             (the map points at those extents).  Manifest kinds: "group"
             (the base: one per group of consecutive stored extents,
             listing their units, as dm-vdo's sparse index points at
             chapters of records) or "segment" (Lillibridge et al. 2009:
             one per written segment, listing every unit written,
             duplicates included, with where it is stored).
Writes WORK/sim.json and prints Markdown tables.
"""

import argparse
import collections
import json
import os
import sys
import time

from spacelib import (MiB, Codecs, chunks, image_path, kept, load_corpus,
                      read_at)

UNIT = 4096
EXTENT_UNITS = 16                     # 64 KiB extents
# Full index entry: 8-byte key + 8-byte value, in a table kept 40..80%
# full (the store's index today): 20..40 bytes per entry.
ENTRY_LO, ENTRY_HI = 20, 40
# Hook entry: 4-byte key fragment + 4-byte group number, same table
# policy: 10..20 bytes per hook.
HOOK_LO, HOOK_HI = 10, 20
EXTENT_TABLE = 8                      # bytes per extent: id -> location
MANIFEST_ENTRY = 40                   # SHA-256 + extent id + slot
# The sparse design's base configuration (simulate()'s defaults).
BASE = dict(S=16, kind="group", group_units=1024, seg_units=256, k=2, R=1,
            cache_units=4096, prev=True)


class Corpus:
    """The 4 KiB units of a corpus's images, hashes interned to ints."""

    def __init__(self, work, chunker, names):
        self.names = names
        self.ids = {}
        self.first = []               # unit id -> (image, offset)
        self.hashbyte = []            # unit id -> last hash byte (hooks)
        self.images = []              # [(name, [(offset, unit id)])]
        for name in names:
            units = []
            for off, length, h in chunks(work, chunker, name, "fixed", UNIT):
                u = self.ids.get(h)
                if u is None:
                    u = self.ids[h] = len(self.first)
                    self.first.append((name, off))
                    self.hashbyte.append(h[31])
                units.append((off, u))
            self.images.append((name, units))
        self.ideal_units = len(self.first)

    def writes(self, corpus):
        """[(volume, units)] in write order."""
        if corpus == "b":
            return [("vol", units) for _, units in self.images]
        return [("vol%02d" % i, units) for i, (_, units) in enumerate(self.images)]


def simulate(c, corpus, S=16, kind="group", group_units=1024, seg_units=256,
             k=2, R=1, cache_units=4096, prev=True, full=False):
    """One design over one corpus; returns its figures (see __doc__).

    S: one unit in S is a hook (hash byte % S == 0).  kind "group": a
    manifest lists the units of group_units of stored data (consecutive
    64 KiB extents); "segment": one per written segment (Lillibridge).
    seg_units: units per written segment (16: each 64 KiB write on its
    own).  k: champions per segment; R: manifests kept per hook;
    cache_units: units of recently used manifests kept in RAM.  prev: a
    write also looks at what its volume held at the same place (group:
    the manifests of the extents the map points at, read if not cached;
    segment: free, the map's own entries).  full: a full 4 KiB index.
    """
    hook = [(b % S) == 0 for b in c.hashbyte]
    sparse = {}                       # hook unit -> [manifest ids]
    manifests = {}                    # manifest id -> {unit: extent}
    cache = collections.OrderedDict() # manifest id -> its units (LRU)
    cache_size = 0
    cached = {}                       # unit -> [count, extent]
    loc = {}                          # full index: unit -> extent
    extents = []                      # extent id -> [units] (store order)
    extent_group = []                 # extent id -> group manifest id
    open_extent = []
    open_group = {}                   # units of the group being filled
    stored = 0
    manifest_reads = 0
    manifest_entries = 0
    segments = 0
    blocks_written = 0
    volmap = {}                       # volume -> {offset: (unit, extent)}

    def cache_add(mid):
        nonlocal cache_size
        if mid in cache:
            cache.move_to_end(mid)
            return
        m = manifests[mid]
        cache[mid] = m
        cache_size += len(m)
        for u, e in m.items():
            ent = cached.get(u)
            if ent is None:
                cached[u] = [1, e]
            else:
                ent[0] += 1
                ent[1] = e
        while cache_size > cache_units and len(cache) > 1:
            old, om = cache.popitem(last=False)
            cache_size -= len(om)
            for u in om:
                ent = cached[u]
                ent[0] -= 1
                if ent[0] == 0:
                    del cached[u]

    def load(mid, avail):
        """A manifest the write needs: read unless cached."""
        nonlocal manifest_reads
        if mid not in cache:
            manifest_reads += 1
        avail.update(manifests[mid])
        cache_add(mid)

    def index_hooks(mid, units):
        for u in units:
            if hook[u]:
                lst = sparse.setdefault(u, [])
                if mid not in lst:
                    lst.insert(0, mid)
                    del lst[R:]

    def seal_group():
        nonlocal open_group, manifest_entries
        if not open_group:
            return
        mid = len(manifests)          # an int: set order must not depend on hash seeds
        manifests[mid] = open_group
        manifest_entries += len(open_group)
        index_hooks(mid, open_group)
        for e in set(open_group.values()):
            extent_group[e] = mid
        cache_add(mid)
        open_group = {}

    def seal_extent():
        nonlocal open_extent
        if not open_extent:
            return
        extents.append(open_extent)
        extent_group.append(None)
        open_extent = []
        if kind == "group" and not full and len(open_group) >= group_units:
            seal_group()

    def store_unit(u):
        nonlocal stored
        stored += 1
        e = len(extents)              # the open extent's id-to-be
        open_extent.append(u)
        open_group[u] = e
        if len(open_extent) == EXTENT_UNITS:
            seal_extent()
        return e

    for vol, units in c.writes(corpus):
        old = volmap.get(vol, {})
        new = {}
        segs = collections.OrderedDict()
        for off, u in units:
            segs.setdefault(off // (seg_units * UNIT), []).append((off, u))
        blocks_written += len({off // (EXTENT_UNITS * UNIT) for off, _ in units})
        for seg in segs.values():
            segments += 1
            seen = {}
            if full:
                for off, u in seg:
                    e = seen.get(u)
                    if e is None:
                        e = loc.get(u)
                    if e is None:
                        e = loc[u] = store_unit(u)
                    seen[u] = e
                    new[off] = (u, e)
                continue
            avail = {}                # unit -> extent, for this segment
            before = {}
            if prev:
                for off, _ in seg:
                    o = old.get(off)
                    if o is not None:
                        before[o[0]] = o[1]
                if kind == "group":
                    for mid in {extent_group[e] for e in before.values()}:
                        if mid is not None:   # None: still in the open group
                            load(mid, avail)
                    before = {}
            # Champions: the manifests the segment's hooks vote for,
            # chosen greedily (most hooks not yet covered first).
            votes = {}
            for off, u in seg:
                if hook[u]:
                    for mid in sparse.get(u, ()):
                        if mid not in cache:
                            votes.setdefault(mid, set()).add(u)
                        else:
                            cache.move_to_end(mid)
            covered = set()
            for _ in range(k):
                best, gain = None, 0
                for mid, hs in votes.items():
                    g = len(hs - covered)
                    if g > gain:
                        best, gain = mid, g
                if best is None:
                    break
                covered |= votes.pop(best)
                load(best, avail)
            for off, u in seg:
                e = seen.get(u)
                if e is None:
                    e = avail.get(u)
                if e is None:
                    ent = cached.get(u)
                    if ent is not None:
                        e = ent[1]
                if e is None:
                    e = open_group.get(u)
                if e is None:
                    e = before.get(u)
                if e is None:
                    e = store_unit(u)
                seen[u] = e
                new[off] = (u, e)
            if kind == "segment":
                mid = len(manifests)
                manifests[mid] = dict(seen)
                manifest_entries += len(seen)
                index_hooks(mid, seen)
                cache_add(mid)
        seal_extent()                 # a flush at the end of each image
        if kind == "group" and not full:
            seal_group()
        volmap[vol] = new

    # Fragmentation: distinct extents per 64 KiB block read, over the
    # final state of every volume.
    blocks = collections.defaultdict(set)
    for vol, m in volmap.items():
        for off, (u, e) in m.items():
            blocks[(vol, off // (EXTENT_UNITS * UNIT))].add(e)
    frag = sum(len(s) for s in blocks.values()) / max(1, len(blocks))
    entries = len(loc) if full else len(sparse)
    per64k = entries / (stored / EXTENT_UNITS)
    return {
        "stored_units": stored, "stored": stored * UNIT,
        "vs_ideal": stored / c.ideal_units,
        "entries": entries, "entries_per_64k": per64k,
        "ram_per_64k": ([per64k * ENTRY_LO, per64k * ENTRY_HI] if full else
                        [per64k * HOOK_LO + EXTENT_TABLE,
                         per64k * HOOK_HI + EXTENT_TABLE]),
        "manifest_reads": manifest_reads,
        "manifest_reads_per_block": manifest_reads / max(1, blocks_written),
        "manifest_entries": manifest_entries,
        "blocks_written": blocks_written, "extents": len(extents),
        "frag": frag, "extent_list": extents,
    }


def fixed_and_cdc(work, chunker, names, mode, size):
    distinct = {}
    for name in names:
        for off, length, h in chunks(work, chunker, name, mode, size):
            if h is not None:
                distinct.setdefault(h, length)
    return len(distinct), sum(distinct.values())


def compress_extents(work, c, extents, codecs, cc, frames=(4096, 16384, 65536)):
    """Stored payload of the sparse design's extents, compressed in
    frames of each size (a frame of 64 KiB: the whole extent), each frame
    kept raw unless it shrinks by at least 1/8."""
    out = {codec: {f: 0 for f in frames} for codec in codecs}
    for ext in extents:
        data = b"".join(read_at(image_path(work, c.first[u][0]), c.first[u][1], UNIT)
                        for u in ext)
        for codec in codecs:
            for f in frames:
                for i in range(0, len(data), f):
                    piece = data[i:i + f]
                    out[codec][f] += kept(len(piece), cc.compress(codec, piece))
    return out


def map_bytes(c, corpus, entry_bytes, leaf_units, cut_units=1):
    """Bytes of map leaves a design writes: every leaf of a new volume,
    then each leaf whose content changed since the volume's last
    version (a leaf: leaf_units map entries of entry_bytes, one entry per
    cut_units 4 KiB units).
    """
    span = leaf_units * cut_units * UNIT
    total = 0
    last = {}
    for vol, units in c.writes(corpus):
        leaves = collections.defaultdict(list)
        for off, u in units:
            leaves[off // span].append((off, u))
        old = last.get(vol, {})
        changed = set(leaves) ^ set(old)
        changed |= {l for l in leaves if l in old and leaves[l] != old[l]}
        total += len(changed - (set(old) - set(leaves))) * leaf_units * entry_bytes
        last[vol] = leaves
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work")
    ap.add_argument("--chunker", required=True)
    ap.add_argument("--corpora", default="a,b,c")
    ap.add_argument("--codecs", default="lz4,zstd:1,zstd:3")
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    meta = load_corpus(work)
    cc = Codecs()
    results = {}
    for corpus in a.corpora.split(","):
        names = meta["corpora"][corpus]
        t0 = time.time()
        c = Corpus(work, a.chunker, names)
        ideal = c.ideal_units * UNIT
        res = {"ideal": ideal, "designs": []}

        def add(name, **fig):
            fig["design"] = name
            res["designs"].append(fig)
            print("sim: (%s) %-44s stored/ideal %.3f  entries/64K %.2f" %
                  (corpus, name, fig["vs_ideal"], fig["entries_per_64k"]),
                  file=sys.stderr, flush=True)

        for size in (65536, 16384):
            n, b = fixed_and_cdc(work, a.chunker, names, "fixed", size)
            add("fixed-%dK, full index (today)" % (size // 1024),
                stored=b, vs_ideal=b / ideal, entries=n,
                entries_per_64k=n / (b / 65536), frag=1.0,
                manifest_reads_per_block=0.0)
        for avg in (8192, 16384, 65536):
            n, b = fixed_and_cdc(work, a.chunker, names, "cdc", avg)
            add("cdc-%dK, full index" % (avg // 1024), stored=b,
                vs_ideal=b / ideal, entries=n, entries_per_64k=n / (b / 65536),
                avg_chunk=b / n, manifest_reads_per_block=0.0)
        r = simulate(c, corpus, full=True)
        add("full-4K: 4K units in 64K extents, full index", **r)
        configs = [dict()]
        for S in (8, 32, 64):
            configs.append(dict(S=S))
        for g in (16, 256):
            configs.append(dict(group_units=g))
        for seg in (16, 64):
            configs.append(dict(seg_units=seg))
        for kk in (1, 4):
            configs.append(dict(k=kk))
        configs.append(dict(R=2))
        for cu in (1024, 16384):
            configs.append(dict(cache_units=cu))
        configs.append(dict(prev=False))
        configs.append(dict(kind="segment"))
        base = None
        for cfg in configs:
            r = simulate(c, corpus, **cfg)
            if not cfg:
                base = dict(r)
            full_cfg = dict(BASE)
            full_cfg.update(cfg)
            r["config"] = full_cfg
            add("sparse " + (" ".join("%s=%s" % kv for kv in sorted(cfg.items()))
                             or "(base)"), **r)
        # Compression of the base sparse design's extents.
        res["compression"] = compress_extents(work, c, base["extent_list"],
                                              a.codecs.split(","), cc)
        res["map"] = {
            "today: 32 B per 64 KiB block, 1024 per leaf":
                map_bytes(c, corpus, 32, 1024, 16),
            "8 B ref per 4 KiB unit, 1024 per leaf":
                map_bytes(c, corpus, 8, 1024),
            "8 B ref per 4 KiB unit, 256 per leaf":
                map_bytes(c, corpus, 8, 256),
            "8 B ref per 4 KiB unit, 4096 per leaf":
                map_bytes(c, corpus, 8, 4096),
            "40 B (hash + ref) per 4 KiB unit, 1024 per leaf":
                map_bytes(c, corpus, 40, 1024),
        }
        res["compression_payload"] = base["stored"]
        for d in res["designs"]:
            d.pop("extent_list", None)
        res["seconds"] = round(time.time() - t0)
        results[corpus] = res
    with open(os.path.join(work, "sim.json"), "w") as f:
        json.dump({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "results": results}, f, indent=1)
    print(tables(results))


def tables(results):
    lines = []
    for corpus, res in results.items():
        lines.append("Corpus (%s): ideal %.1f MiB\n" % (corpus, res["ideal"] / MiB))
        lines.append("| design | stored MiB | stored/ideal | index entries per stored 64 KiB | index RAM B per stored 64 KiB (a) | manifest reads per 64 KiB written | manifests MiB on disk (b) | extents per 64 KiB read |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for d in res["designs"]:
            ram = d.get("ram_per_64k") or [d["entries_per_64k"] * ENTRY_LO,
                                           d["entries_per_64k"] * ENTRY_HI]
            man = d.get("manifest_entries")
            lines.append("| %s | %.1f | %.3f | %.2f | %.0f..%.0f | %.3f | %s | %s |" % (
                d["design"], d["stored"] / MiB, d["vs_ideal"],
                d["entries_per_64k"], ram[0], ram[1],
                d.get("manifest_reads_per_block", 0),
                "%.1f" % (man * MANIFEST_ENTRY / MiB) if man else "-",
                "%.2f" % d["frag"] if "frag" in d else "-"))
        lines.append("")
        lines.append("(a) full index: 16-byte entries, 40..80%% full (today's index); sparse: "
                     "8-byte hook entries (4-byte key fragment, 4-byte group number), "
                     "40..80%% full, + 8 bytes per extent for the extent table.  "
                     "(b) %d bytes per entry (SHA-256, extent id, slot)." % MANIFEST_ENTRY)
        comp = res.get("compression")
        if comp:
            lines.append("")
            lines.append("The base sparse design's extents compressed (payload %.1f MiB), MiB stored by frame size:\n" %
                         (res["compression_payload"] / MiB))
            frames = sorted(next(iter(comp.values())), key=int)
            lines.append("| codec | " + " | ".join("%d KiB frames" % (int(f) // 1024) for f in frames) + " |")
            lines.append("|---|" + "---:|" * len(frames))
            for codec, v in comp.items():
                lines.append("| %s | " % codec + " | ".join("%.1f" % (v[f] / MiB) for f in frames) + " |")
        if res.get("map"):
            lines.append("")
            lines.append("Map leaves written (MiB), the volumes' maps over the whole corpus:\n")
            lines.append("| map entry | MiB | % of ideal |")
            lines.append("|---|---:|---:|")
            for name, b in res["map"].items():
                lines.append("| %s | %.2f | %.1f |" % (name, b / MiB, 100 * b / res["ideal"]))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
