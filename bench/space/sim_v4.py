#!/usr/bin/python3
"""Format version 4 as planned (/work/notes/v4/PLAN.md, issue 15 item 3):
the run-limited block descriptor simulated over the corpus images.

    sim_v4.py WORK --chunker PATH [--corpora a,b,c] [--json FILE]

What differs from sim.py's "sparse" design: the volume map keeps one
32-byte slot per 64 KiB block, holding a descriptor of at most 5 runs (a
run: consecutive slots of one extent, or zero units), so a block whose
units dedup against too many places is stored again ("fallback").

The model, per import (one process, one writer, as `nbdcas import`;
blocks in offset order; (a) and (c) a new volume per image, (b) every
night rewritten whole into the same volume):
  * units: 4 KiB, named by SHA-256; all-zero units are zero runs;
  * extents of 16 slots, ids in groups of 64 extents taken whole by a
    writer (a new import takes a new group), the open extent closed at
    the end of the import (the flush);
  * hooks: units with last SHA-256 byte % 16 == 0 -> the newest extent
    holding one (updated at every append);
  * a block's units are looked up in the writer's unit cache (its own
    last OWN units, then the CACHE groups it loaded most recently), then
    in the slot tables of the extents the block's old descriptor names
    (previous content); units still missing that are hooks vote for the
    groups of the extents their hooks name; the K groups with most votes
    not cached are loaded (their extents' slot tables), the lookups
    retried;
  * units still missing are new: appended to the open extent in block
    order (a unit twice in a block is appended once);
  * runs are built (adjacent units, one extent, consecutive slots); more
    than MAX runs: every non-zero unit of the block is appended again
    (fresh, in order), zero units stay zero runs; still more than MAX:
    all 16 units appended, zeros included.  The run count is known before
    anything is appended (new units take the next slots), so a fallback
    block appends nothing twice; a writer that appends first and checks
    after would store the missing units twice ("naive waste").
  * previous content: a unit equal to the one the old descriptor had at
    the same position takes that reference (in the plan's order only
    after the caches: then another copy found first can split an
    unchanged block into more runs).
Variants (simulate()'s arguments, the CONFIGS list): MAX 4, 6, 7 or
unlimited; previous content first; chain (continue the previous unit's
run first); longest (of every place a unit is known, the one whose run
goes on longest); align (a block's new units start a new extent when they
do not fit in the open one); partial fallback (keep the runs that save
most, store only the others fresh); segments (hooks of 16 blocks vote
together); cache, own, k sizes.
Counted: unit payload (4096 B a unit), slot tables (40 B a unit), extent
headers (64 B an extent), map leaves written (32 B per 64 KiB block, 1024
slots a leaf: every leaf of a new volume, then every leaf whose slots
changed, as sim.py counts maps), hooks RAM (8-byte entries at 40..80%
load) and the extent table (8 B an extent) per stored 64 KiB.
Prints Markdown tables; --json writes the figures.
"""

import argparse
import collections
import json
import os
import sys
import time

from spacelib import MiB, load_corpus
from sim import Corpus

UNIT = 4096
UNITS = 16                    # units per 64 KiB block
SLOTS = 16                    # slots per extent
GROUP_EXTENTS = 64
SLOT_ENTRY = 40
EXTENT_HEADER = 64
DESC = 32
LEAF_SLOTS = 1024
HOOK_ENTRY = 8
EXTENT_TABLE = 8
ZERO = -1                     # a zero unit stored by the last fallback stage
BASE = dict(max_runs=5, cache=4, own=1024, k=2, S=16, order="plan",
            chain=False, align=False, fallback="plan", seg=1, choose="first")


class Writer:
    """One import's writer: its groups, open extent and unit caches."""

    def __init__(self, st, own):
        self.st = st
        self.group = None         # group number being filled
        self.next_ext = 0         # index in the group of the next extent
        self.eid = None           # open extent, None when closed
        self.fill = 0
        self.own = {}             # unit -> (eid, slot), last `own` units
        self.own_fifo = collections.deque()
        self.own_max = own
        self.cache = collections.OrderedDict()   # group -> {unit: ref}

    def positions(self, n):
        """The (eid, slot) the next n appends will get (no change)."""
        out = []
        g, nx, eid, fill = self.group, self.next_ext, self.eid, self.fill
        for _ in range(n):
            if eid is None or fill == SLOTS:
                if g is None or nx == GROUP_EXTENTS:
                    g = self.st.next_group if g is None or g < self.st.next_group else g + 1
                    nx = 0
                eid = g * GROUP_EXTENTS + nx
                nx += 1
                fill = 0
            out.append((eid, fill))
            fill += 1
        return out

    def append(self, u):
        st = self.st
        if self.eid is None or self.fill == SLOTS:
            if self.group is None or self.next_ext == GROUP_EXTENTS:
                self.group = st.next_group
                st.next_group += 1
                self.next_ext = 0
            self.eid = self.group * GROUP_EXTENTS + self.next_ext
            self.next_ext += 1
            self.fill = 0
            st.extents[self.eid] = []
            st.groups.setdefault(self.group, []).append(self.eid)
        ref = (self.eid, self.fill)
        st.extents[self.eid].append(u)
        self.fill += 1
        st.stored += 1
        if u != ZERO:
            if st.hook[u]:
                st.hooks[u] = self.eid
            self.own[u] = ref
            self.own_fifo.append((u, ref))
            if len(self.own_fifo) > self.own_max:
                ou, oref = self.own_fifo.popleft()
                if self.own.get(ou) == oref:
                    del self.own[ou]
        return ref

    def flush(self):
        self.eid = None           # the next append opens a new extent


class Store:
    def __init__(self, c, S):
        self.hook = [(b % S) == 0 for b in c.hashbyte]
        self.hooks = {}           # unit -> newest eid holding it
        self.extents = {}         # eid -> [unit per slot]
        self.groups = {}          # group -> [eid]
        self.next_group = 1       # extent id 0 means a zero run
        self.stored = 0


def expand(st, desc):
    """The units a descriptor reads (None for zero)."""
    got = []
    for e, s0, n in desc:
        got += [None] * n if e == 0 else [
            None if x == ZERO else x for x in st.extents[e][s0:s0 + n]]
    return got


def runs_of(refs):
    """Runs of a block's per-unit refs ((eid, slot), eid 0 = zero)."""
    runs = []
    for e, s in refs:
        if runs:
            re, rs, rc = runs[-1]
            if re == e and (e == 0 or rs + rc == s):
                runs[-1] = (re, rs, rc + 1)
                continue
        runs.append((e, 0 if e == 0 else s, 1))
    return tuple(runs)


def partial_fallback(w, bu, refs, missing, max_runs):
    """A block over max_runs runs: keep the found runs that save most and
    store the rest fresh, in block order (consecutive fresh runs merge
    into one, their units taking consecutive slots).  A small dynamic
    programme over the block's runs (at most 16) minimising the units
    stored that need not be (found or zero units).  Returns the block's
    refs with None for each unit to append, or None if no choice fits
    (the extent boundary may add a run: budgets below max_runs are tried).
    """
    # Runs of the block, new units never kept (their slots move).
    runs = []                 # [first unit, count, kind] kind 0 zero, 1 found, 2 new
    for i, r in enumerate(refs):
        kind = 0 if r[0] == 0 else (2 if i in missing else 1)
        if runs:
            f, n, k = runs[-1]
            pr = refs[i - 1]
            if k == kind and pr[0] == r[0] and (r[0] == 0 or pr[1] + 1 == r[1]):
                runs[-1][1] += 1
                continue
        runs.append([i, 1, kind])
    INF = 1 << 30
    for budget in range(max_runs, 0, -1):
        # best[(used, last_fresh)] = (cost, choices)
        best = {(0, False): (0, ())}
        for f, n, kind in runs:
            nxt = {}
            for (used, lf), (cost, ch) in best.items():
                opts = []
                if kind != 2:
                    opts.append((used + 1, False, cost, ch + (True,)))
                opts.append((used + (0 if lf else 1), True,
                             cost + (0 if kind == 2 else n), ch + (False,)))
                for u2, lf2, c2, ch2 in opts:
                    if u2 <= budget and c2 < nxt.get((u2, lf2), (INF,))[0]:
                        nxt[(u2, lf2)] = (c2, ch2)
            best = nxt
        if not best:
            continue
        cost, keep = min(best.values())
        out = list(refs)
        nfresh = 0
        for (f, n, kind), k in zip(runs, keep):
            if not k:
                for i in range(f, f + n):
                    out[i] = None
                nfresh += n
        pos = iter(w.positions(nfresh))
        trial = [next(pos) if r is None else r for r in out]
        if len(runs_of(trial)) <= max_runs:
            return out
    return None


def simulate(c, corpus, max_runs=5, cache=4, own=1024, k=2, S=16,
             order="plan", chain=False, align=False, fallback="plan",
             seg=1, choose="first", check=False):
    """One configuration over one corpus; returns its figures.

    max_runs: runs a descriptor may hold (None: unlimited).  cache:
    groups the writer keeps loaded (LRU).  own: the writer's own most
    recent units it remembers.  k: groups loaded per block at most.
    order: "plan" (own, cache, previous content) or "prev" (previous
    content first).  chain: a unit that continues the previous unit's run
    (the next slot of the same extent holds it) takes that reference
    before any other lookup.  align: a block whose new units do not fit
    in the open extent's room closes it first (cas_extent_appender_room,
    then _flush), so a block's new units are one run.  fallback: "plan"
    (every non-zero unit fresh) or "partial" (keep the runs that save
    most, store only the others fresh: partial_fallback).  seg: blocks
    whose hooks vote together before the first of them is written (1:
    each block alone, as the plan's writer sees them; 16: 1 MiB, sim.py's
    segments of 256 units).  choose: "first" (the first place the lookup
    order finds) or "longest" (of every place the unit is known -- its
    own units, every cached group, previous content -- the one whose run
    goes on longest in the block; chain is then moot).  check:
    assert that every descriptor reads back its block's units.
    """
    st = Store(c, S)
    volmap = {}                   # volume -> {block: runs}
    hist = collections.Counter()  # runs per block before fallback
    blocks = fb1 = fb2 = 0
    fb_units = fb_new = 0         # units appended by fallback; of which new anyway
    loads = 0
    map_bytes = 0
    leaf_seen = set()
    leaves_distinct = 0
    imports = c.writes(corpus)
    per_import = []
    for vol, units in imports:
        w = Writer(st, own)

        def load_groups(votes):
            """Load the k groups with most votes (slot tables of their extents)."""
            nonlocal loads
            for g, _ in sorted(votes.items(), key=lambda kv: (-kv[1], -kv[0]))[:k]:
                loads += 1
                snap = {}
                for e in st.groups[g]:
                    for sl, gu in enumerate(st.extents[e]):
                        if gu != ZERO:
                            snap[gu] = (e, sl)
                w.cache[g] = snap
                while len(w.cache) > cache:
                    w.cache.popitem(last=False)
        old = volmap.get(vol, {})
        new = {}
        byblock = collections.OrderedDict()
        for off, u in units:
            b = off // (UNITS * UNIT)
            lst = byblock.get(b)
            if lst is None:
                lst = byblock[b] = [None] * UNITS
            lst[(off // UNIT) % UNITS] = u
        order_blocks = list(byblock)
        imp = {"image": c.images[len(per_import)][0], "blocks": len(byblock),
               "fallback_blocks": 0, "fallback_unchanged": 0,
               "units_appended": st.stored}
        per_import.append(imp)
        for j, (b, bu) in enumerate(byblock.items()):
            blocks += 1
            if seg > 1 and j % seg == 0:
                # Hooks of the next seg blocks vote once for the segment.
                known = {}
                for b2 in order_blocks[j:j + seg]:
                    for e, _, _ in old.get(b2, ()):
                        if e:
                            for pu in st.extents[e]:
                                known[pu] = True
                votes = collections.Counter()
                for b2 in order_blocks[j:j + seg]:
                    for u in byblock[b2]:
                        if (u is not None and st.hook[u] and u in st.hooks
                                and u not in known and u not in w.own
                                and not any(u in m for m in w.cache.values())):
                            g = st.hooks[u] // GROUP_EXTENTS
                            if g not in w.cache:
                                votes[g] += 1
                if votes:
                    load_groups(votes)
            od = old.get(b)
            prev = {}
            old_at = [None] * UNITS       # position i: (unit, ref) before
            if od:
                for e, _, _ in od:
                    if e:
                        for s, pu in enumerate(st.extents[e]):
                            if pu != ZERO:
                                prev[pu] = (e, s)
                # A unit the old descriptor names takes that reference
                # (another copy in the same extents must not split a run);
                # at its own position, the reference it had there.
                i = 0
                for e, s0, n in od:
                    for s in range(s0, s0 + n):
                        if e:
                            pu = st.extents[e][s]
                            if pu != ZERO:
                                prev[pu] = (e, s)
                            old_at[i] = (pu, (e, s))
                        i += 1

            def lookup(i, u):
                if order == "prev":
                    if old_at[i] is not None and old_at[i][0] == u:
                        return old_at[i][1]
                    r = prev.get(u)
                    if r is not None:
                        return r
                r = w.own.get(u)
                if r is not None:
                    return r
                for g in reversed(w.cache):
                    r = w.cache[g].get(u)
                    if r is not None:
                        w.cache.move_to_end(g)
                        return r
                if old_at[i] is not None and old_at[i][0] == u:
                    return old_at[i][1]
                return prev.get(u)

            def candidates(i, u):
                """Every reference known for u, in lookup order."""
                out = []
                exact = old_at[i][1] if old_at[i] is not None and old_at[i][0] == u else None
                p = [exact, prev.get(u)]
                if order == "prev":
                    out += p
                out.append(w.own.get(u))
                for g in reversed(w.cache):
                    out.append(w.cache[g].get(u))
                if order != "prev":
                    out += p
                return list(dict.fromkeys(r for r in out if r is not None))

            refs = [None] * UNITS
            missing = []
            for i, u in enumerate(bu):
                if u is None:
                    # Previous content first: a zero unit a fallback stored
                    # here keeps its reference (the block's runs stay).
                    if order == "prev" and old_at[i] is not None and old_at[i][0] == ZERO:
                        refs[i] = old_at[i][1]
                    else:
                        refs[i] = (0, 0)
                    continue
                if chain and i and refs[i - 1] is not None and refs[i - 1][0]:
                    e, s = refs[i - 1]
                    ext = st.extents[e]
                    if s + 1 < len(ext) and ext[s + 1] == u:
                        refs[i] = (e, s + 1)
                        continue
                r = lookup(i, u)
                if r is None:
                    missing.append(i)
                else:
                    refs[i] = r
            if missing:
                votes = collections.Counter()
                for i in missing:
                    u = bu[i]
                    if st.hook[u] and u in st.hooks:
                        g = st.hooks[u] // GROUP_EXTENTS
                        if g not in w.cache:
                            votes[g] += 1
                if votes:
                    load_groups(votes)
                    still = []
                    for i in missing:
                        r = lookup(i, bu[i])
                        if r is None:
                            still.append(i)
                        else:
                            refs[i] = r
                    missing = still
            if choose == "longest":
                # Every place a unit is known, the one whose run goes on
                # longest in the block wins (ties: lookup order).
                miss = set(missing)
                i = 0
                while i < UNITS:
                    u = bu[i]
                    if u is None or i in miss:
                        i += 1
                        continue
                    best, bestlen = None, 0
                    for r in candidates(i, u):
                        e, s0 = r
                        ext = st.extents[e]
                        n = 0
                        while (i + n < UNITS and bu[i + n] is not None
                               and i + n not in miss and s0 + n < len(ext)
                               and ext[s0 + n] == bu[i + n]):
                            n += 1
                        if n > bestlen:
                            best, bestlen = r, n
                    e, s0 = best
                    if e // GROUP_EXTENTS in w.cache:
                        w.cache.move_to_end(e // GROUP_EXTENTS)
                    for n in range(bestlen):
                        refs[i + n] = (e, s0 + n)
                    i += bestlen
            # New units take the next slots, a unit twice in the block once.
            newu = list(dict.fromkeys(bu[i] for i in missing))
            if align and w.eid is not None and len(newu) > SLOTS - w.fill:
                w.flush()
            pos = dict(zip(newu, w.positions(len(newu))))
            for i in missing:
                refs[i] = pos[bu[i]]
            runs = runs_of(refs)
            hist[len(runs)] += 1
            if max_runs is None or len(runs) <= max_runs:
                for u in newu:
                    w.append(u)
                refs2 = refs
            else:
                fb1 += 1
                imp["fallback_blocks"] += 1
                if od and expand(st, od) == bu:
                    imp["fallback_unchanged"] += 1
                refs2 = None
                if fallback == "partial":
                    refs2 = partial_fallback(w, bu, refs, set(missing), max_runs)
                if refs2 is not None:
                    fb_units += sum(1 for r in refs2 if r is None)
                    refs2 = [w.append(ZERO if bu[i] is None else bu[i])
                             if r is None else r for i, r in enumerate(refs2)]
                    fb_new += len(newu)
                    runs = runs_of(refs2)
                    if runs != ((0, 0, UNITS),):
                        new[b] = runs
                    continue
                nz = [i for i in range(UNITS) if bu[i] is not None]
                if align and w.eid is not None and len(nz) > SLOTS - w.fill:
                    w.flush()
                pos = w.positions(len(nz))
                refs2 = list(refs)
                for i, p in zip(nz, pos):
                    refs2[i] = p
                if len(runs_of(refs2)) <= max_runs:
                    for i in nz:
                        w.append(bu[i])
                    fb_units += len(nz)
                else:
                    fb2 += 1
                    refs2 = [w.append(ZERO if u is None else u) for u in bu]
                    fb_units += UNITS
                fb_new += len(newu)
            runs = runs_of(refs2)
            if runs != ((0, 0, UNITS),):
                new[b] = runs
        w.flush()
        imp["units_appended"] = st.stored - imp["units_appended"]
        if check:                 # every descriptor reads back its block
            for b, bu in byblock.items():
                got = expand(st, new.get(b, ((0, 0, UNITS),)))
                assert got == bu, (vol, b, got, bu)
                assert max_runs is None or len(new.get(b, ())) <= max_runs
        # Map leaves written: all of a new volume's, then the changed ones.
        leaves = collections.defaultdict(dict)
        for b, d in new.items():
            leaves[b // LEAF_SLOTS][b] = d
        oldl = collections.defaultdict(dict)
        for b, d in old.items():
            oldl[b // LEAF_SLOTS][b] = d
        for l, content in leaves.items():
            if l not in oldl or oldl[l] != content:
                map_bytes += LEAF_SLOTS * DESC
                key = tuple(sorted(content.items()))
                if key not in leaf_seen:
                    leaf_seen.add(key)
                    leaves_distinct += 1
        volmap[vol] = new

    nextents = len(st.extents)
    unit_bytes = st.stored * UNIT
    slot_bytes = st.stored * SLOT_ENTRY
    header_bytes = nextents * EXTENT_HEADER
    total = unit_bytes + slot_bytes + header_bytes + map_bytes
    ideal = c.ideal_units * UNIT
    per64k = st.stored / UNITS
    hooks = len(st.hooks)
    # Fragmentation of the final state: extents per 64 KiB block read.
    fin_blocks = fin_ext = fin_runs = 0
    for m in volmap.values():
        for d in m.values():
            fin_blocks += 1
            fin_runs += len(d)
            fin_ext += len({e for e, _, _ in d if e})
    return {
        "ideal": ideal, "stored_units": st.stored, "unit_bytes": unit_bytes,
        "slot_bytes": slot_bytes, "extents": nextents,
        "header_bytes": header_bytes, "map_bytes": map_bytes,
        "map_bytes_distinct_leaves": leaves_distinct * LEAF_SLOTS * DESC,
        "total": total, "vs_ideal": total / ideal,
        "units_vs_ideal": unit_bytes / ideal,
        "blocks": blocks, "runs_hist": dict(sorted(hist.items())),
        "fallback_blocks": fb1, "fallback_all16": fb2,
        "fallback_units": fb_units, "fallback_new_anyway": fb_new,
        "fallback_extra_bytes": (fb_units - fb_new) * (UNIT + SLOT_ENTRY),
        "naive_waste_bytes": fb_new * (UNIT + SLOT_ENTRY),
        "group_loads": loads, "group_loads_per_block": loads / max(1, blocks),
        "hooks": hooks, "hooks_per_64k": hooks / per64k,
        "ram_per_64k": [hooks * HOOK_ENTRY / 0.8 / per64k + EXTENT_TABLE * nextents / per64k,
                        hooks * HOOK_ENTRY / 0.4 / per64k + EXTENT_TABLE * nextents / per64k],
        "final_runs_per_block": fin_runs / max(1, fin_blocks),
        "final_extents_per_block": fin_ext / max(1, fin_blocks),
        "imports": per_import,
    }


CONFIGS = [
    ("max runs 5 (the plan)", dict()),
    ("max runs 4", dict(max_runs=4)),
    ("max runs 6", dict(max_runs=6)),
    ("max runs 7", dict(max_runs=7)),
    ("unlimited runs", dict(max_runs=None)),
    ("max 5, previous content first", dict(order="prev")),
    ("max 5, chain: continue the run first", dict(chain=True)),
    ("max 5, chain + previous first", dict(chain=True, order="prev")),
    ("max 5, align: a block's new units in one extent", dict(align=True)),
    ("max 5, align + chain + previous first", dict(align=True, chain=True, order="prev")),
    ("max 4, align + chain + previous first", dict(max_runs=4, align=True, chain=True, order="prev")),
    ("unlimited, align + chain + previous first", dict(max_runs=None, align=True, chain=True, order="prev")),
    ("max 5, partial fallback", dict(fallback="partial")),
    ("max 5, partial fallback + chain + previous first", dict(fallback="partial", chain=True, order="prev")),
    ("max 5, partial + align + chain + previous first", dict(fallback="partial", align=True, chain=True, order="prev")),
    ("max 4, partial + align + chain + previous first", dict(max_runs=4, fallback="partial", align=True, chain=True, order="prev")),
    ("max 5, partial + align + chain + previous first, segments of 16 blocks", dict(fallback="partial", align=True, chain=True, order="prev", seg=16)),
    ("unlimited, segments of 16 blocks", dict(max_runs=None, seg=16)),
    ("max 5, longest", dict(choose="longest")),
    ("max 5, longest + previous first", dict(choose="longest", order="prev")),
    ("max 5, longest + partial + align + previous first", dict(choose="longest", fallback="partial", align=True, order="prev")),
    ("max 4, longest + partial + align + previous first", dict(max_runs=4, choose="longest", fallback="partial", align=True, order="prev")),
    ("max 6, longest + partial + align + previous first", dict(max_runs=6, choose="longest", fallback="partial", align=True, order="prev")),
    ("max 7, longest + partial + align + previous first", dict(max_runs=7, choose="longest", fallback="partial", align=True, order="prev")),
    ("unlimited, longest + align + previous first", dict(max_runs=None, choose="longest", align=True, order="prev")),
    ("max 5, cache 8 groups", dict(cache=8)),
    ("max 5, own units 4096", dict(own=4096)),
    ("max 5, k=1", dict(k=1)),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work")
    ap.add_argument("--chunker", required=True)
    ap.add_argument("--corpora", default="a,b,c")
    ap.add_argument("--configs", default=None,
                    help="comma-separated indexes into the configuration list "
                         "(default: all)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--check", action="store_true",
                    help="assert every descriptor reads back its block")
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    meta = load_corpus(work)
    configs = CONFIGS
    if a.configs:
        configs = [CONFIGS[int(i)] for i in a.configs.split(",")]
    results = {}
    for corpus in a.corpora.split(","):
        t0 = time.time()
        c = Corpus(work, a.chunker, meta["corpora"][corpus])
        res = results[corpus] = []
        for name, cfg in configs:
            t = time.time()
            r = simulate(c, corpus, check=a.check, **cfg)
            full = dict(BASE)
            full.update(cfg)
            r["name"], r["config"] = name, full
            r["seconds"] = round(time.time() - t, 1)
            res.append(r)
            print("sim_v4: (%s) %-40s total/ideal %.3f  fallback %d/%d blocks  %.0fs" %
                  (corpus, name, r["vs_ideal"], r["fallback_blocks"], r["blocks"],
                   r["seconds"]), file=sys.stderr, flush=True)
        print("sim_v4: (%s) %.0f s" % (corpus, time.time() - t0), file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "results": results}, f, indent=1)
    print(tables(results))


def tables(results):
    L = []
    corpora = list(results)
    if len(corpora) > 1:
        L.append("total/ideal (units, slot tables, extent headers, map leaves) per corpus:\n")
        L.append("| configuration | " + " | ".join("(%s)" % c for c in corpora) + " |")
        L.append("|---|" + "---:|" * len(corpora))
        for i, r in enumerate(results[corpora[0]]):
            L.append("| %s | " % r["name"] + " | ".join(
                "%.3f" % results[c][i]["vs_ideal"] for c in corpora) + " |")
        L.append("")
    for corpus, res in results.items():
        ideal = res[0]["ideal"]
        L.append("Corpus (%s): ideal %.1f MiB (distinct non-zero 4 KiB units)\n" %
                 (corpus, ideal / MiB))
        L.append("| configuration | units MiB | slot tables MiB | extent headers MiB (extents) | map MiB | total MiB | total/ideal | units/ideal | fallback blocks (all 16) | fallback extra MiB | naive waste MiB | group loads / block | hooks RAM B / stored 64 KiB | runs / 64 KiB read | extents / 64 KiB read |")
        L.append("|---|" + "---:|" * 14)
        for r in res:
            L.append("| %s | %.1f | %.2f | %.2f (%d) | %.2f | %.1f | %.3f | %.3f | %d of %d, %.2f%% (%d) | %.2f | %.2f | %.3f | %.0f..%.0f | %.2f | %.2f |" % (
                r["name"], r["unit_bytes"] / MiB, r["slot_bytes"] / MiB,
                r["header_bytes"] / MiB, r["extents"], r["map_bytes"] / MiB,
                r["total"] / MiB, r["vs_ideal"], r["units_vs_ideal"],
                r["fallback_blocks"], r["blocks"],
                100 * r["fallback_blocks"] / max(1, r["blocks"]),
                r["fallback_all16"], r["fallback_extra_bytes"] / MiB,
                r["naive_waste_bytes"] / MiB, r["group_loads_per_block"],
                r["ram_per_64k"][0], r["ram_per_64k"][1],
                r["final_runs_per_block"], r["final_extents_per_block"]))
        L.append("")
        L.append("Runs per block written, before fallback (share of blocks, %):\n")
        maxn = max(max(int(n) for n in r["runs_hist"]) for r in res)
        L.append("| configuration | " + " | ".join(str(n) for n in range(1, maxn + 1)) + " |")
        L.append("|---|" + "---:|" * maxn)
        for r in res:
            h = {int(n): v for n, v in r["runs_hist"].items()}
            L.append("| %s | " % r["name"] + " | ".join(
                "%.2f" % (100 * h.get(n, 0) / r["blocks"]) for n in range(1, maxn + 1)) + " |")
        L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    main()
