#!/usr/bin/python3
"""Build the space corpus (issue 15) from this machine's /usr, no downloads.

    corpus.py WORKDIR [--force]

Writes WORKDIR/img/*.img and WORKDIR/corpus.json (which images make which
corpus, in write order):

  (a) four ext4 images made by `mke2fs -d` of different, overlapping trees:
      a1 /usr/share/doc
      a2 a copy of it with files edited, added and removed (5%/5%/+perl)
      a3 half of /usr/share/doc (packages a..l) + /usr/lib/python3.11
      a4 /usr/lib/python3.11 + /usr/share/vim + /usr/share/perl
  (b) a1, then ten "nights": each a day of changes made through a loop
      mount of the image (a package upgraded by write-and-rename, one
      installed, one removed, logs appended, a database file rewritten
      page by page in place, documents edited in place, small files added
      and deleted; fstrim at the end of the day), copied after each night.
  (c) a1 again, for ten volumes (no extra image).

mke2fs runs with a fixed UUID, hash seed and time (E2FSPROGS_FAKE_TIME), so
a1 is the same from run to run; the trees copied for a2..a4 carry the time
they were made (their inode tables differ between builds), and the nights
are made by the running kernel's ext4 with real timestamps, so they vary
slightly from run to run (the space figures by under 0.5%).  Needs root
(loop mount).
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

MiB = 1024 * 1024
CORPUS_VERSION = 1
FAKE_TIME = "1767225600"          # 2026-01-01, for mke2fs only
NIGHTS = 10


def run(*args, **kw):
    subprocess.run(args, check=True, **kw)


def tree_bytes(path):
    """Bytes a tree takes as 4 KiB blocks (file sizes rounded up)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for f in files + dirs:
            try:
                st = os.lstat(os.path.join(root, f))
            except FileNotFoundError:
                continue
            total += (st.st_size + 4095) // 4096 * 4096
    return total


def copy_tree(src, dst):
    # Plain copies (no hard links: mke2fs -d would keep them as links,
    # and editing a link to /usr would edit /usr).
    run("cp", "-a", "--no-preserve=links", src, dst)


def mkfs(tree, image, uuid):
    """ext4 image of tree, sized to the tree plus a quarter and 48 MiB."""
    size = tree_bytes(tree) * 5 // 4 + 48 * MiB
    size = (size + 16 * MiB - 1) // (16 * MiB) * (16 * MiB)
    if os.path.exists(image):
        os.unlink(image)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=FAKE_TIME)
    run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-U", uuid,
        "-E", "hash_seed=%s,root_owner=0:0" % uuid, "-d", tree,
        image, str(size // 1024) + "k", env=env, stdout=subprocess.DEVNULL)


def files_under(top):
    out = []
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return out


def is_text(path):
    with open(path, "rb") as f:
        head = f.read(2048)
    return head and b"\0" not in head and not path.endswith(".gz")


def guarded(path, work):
    """Refuse to modify anything outside the work directory."""
    real = os.path.realpath(path)
    if not real.startswith(os.path.realpath(work) + os.sep):
        sys.exit("corpus.py: refusing to modify %s (outside %s)" % (real, work))
    return path


def text_lines(rng, n, tag):
    words = ("alpha beta gamma delta block chunk store volume snapshot "
             "extent index flush write read cache map leaf node pack "
             "record hash zero trim").split()
    return "".join("%s %06d %s %s\n" % (tag, rng.randrange(10 ** 6),
                                        " ".join(rng.choice(words)
                                                 for _ in range(8)),
                                        "%08x" % rng.getrandbits(32))
                   for _ in range(n)).encode()


def edit_in_place(path, rng):
    """Overwrite a few bytes in the middle, same size (a document edit)."""
    size = os.path.getsize(path)
    if size < 64:
        return
    off = rng.randrange(size - 32)
    with open(path, "r+b") as f:
        f.seek(off)
        old = f.read(32)
        f.seek(off)
        f.write(bytes((b ^ 0x20) if 0x41 <= b <= 0x7a else b for b in old))


def rewrite(path, rng, work):
    """Edit a file the way editors and dpkg do: new file, rename over."""
    with open(path, "rb") as f:
        data = f.read()
    if is_text(path):
        lines = data.split(b"\n")
        for _ in range(max(1, len(lines) // 50)):
            i = rng.randrange(len(lines))
            lines.insert(i, text_lines(rng, 1, b"changed".decode()).rstrip())
        data = b"\n".join(lines)
    else:
        data = data + text_lines(rng, 4, "trailer")
    tmp = guarded(path + ".dpkg-new", work)
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, guarded(path, work))


def build_tree2(work):
    t2 = os.path.join(work, "trees", "t2")
    copy_tree("/usr/share/doc", t2)
    rng = random.Random(2)
    files = files_under(t2)
    rng.shuffle(files)
    n = len(files) // 20
    for p in files[:n]:                       # 5% removed
        os.unlink(guarded(p, work))
    for p in files[n:2 * n]:                  # 5% changed
        if is_text(p) and rng.random() < 0.5:
            edit_in_place(guarded(p, work), rng)
        else:
            rewrite(p, rng, work)
    copy_tree("/usr/share/perl", os.path.join(t2, "perl-doc"))   # added
    notes = os.path.join(t2, "local-notes")
    os.mkdir(notes)
    for i in range(200):
        with open(os.path.join(notes, "note-%03d.txt" % i), "wb") as f:
            f.write(text_lines(rng, rng.randrange(5, 200), "note"))
    return t2


def build_tree3(work):
    t3 = os.path.join(work, "trees", "t3")
    os.makedirs(os.path.join(t3, "doc"))
    for d in sorted(os.listdir("/usr/share/doc")):
        if "a" <= d[0] <= "l":
            copy_tree(os.path.join("/usr/share/doc", d), os.path.join(t3, "doc", d))
    copy_tree("/usr/lib/python3.11", os.path.join(t3, "python3.11"))
    return t3


def build_tree4(work):
    t4 = os.path.join(work, "trees", "t4")
    os.makedirs(t4)
    for src, name in (("/usr/lib/python3.11", "python3.11"),
                      ("/usr/share/vim", "vim"), ("/usr/share/perl", "perl")):
        copy_tree(src, os.path.join(t4, name))
    return t4


def package_pool():
    """Directories to 'install', one a night: 0.5..8 MiB each."""
    pool = []
    for top in ("/usr/lib/python3/dist-packages", "/usr/include",
                "/usr/share/locale"):
        for d in sorted(os.listdir(top)):
            p = os.path.join(top, d)
            if os.path.isdir(p) and not os.path.islink(p):
                if MiB // 2 <= tree_bytes(p) <= 8 * MiB:
                    pool.append(p)
    return pool


def night(mnt, n, pool, work):
    """One day of changes on the mounted file system."""
    rng = random.Random(1000 + n)
    docdirs = sorted(d for d in os.listdir(mnt)
                     if os.path.isdir(os.path.join(mnt, d))
                     and not os.path.islink(os.path.join(mnt, d))
                     and d not in ("lost+found", "var", "installed"))
    # A package upgraded: every file of two packages rewritten (dpkg).
    for d in rng.sample(docdirs, 2):
        for p in files_under(os.path.join(mnt, d)):
            rewrite(p, rng, work)
    # A package installed.
    inst = os.path.join(mnt, "installed")
    os.makedirs(inst, exist_ok=True)
    src = pool[rng.randrange(len(pool))]
    dst = os.path.join(inst, "%02d-%s" % (n, os.path.basename(src)))
    copy_tree(src, dst)
    # A package removed.
    victim = rng.choice([d for d in docdirs])
    shutil.rmtree(guarded(os.path.join(mnt, victim), work))
    # Logs appended; rotated on night 5.
    logs = os.path.join(mnt, "var", "log")
    os.makedirs(logs, exist_ok=True)
    for i in range(5):
        p = guarded(os.path.join(logs, "app%d.log" % i), work)
        if n == 5 and os.path.exists(p):
            os.rename(p, p + ".1")
        with open(p, "ab") as f:
            f.write(text_lines(rng, rng.randrange(100, 800), "log%d" % n))
    # A database rewritten in place, page by page (8 MiB, 4 KiB pages).
    db = guarded(os.path.join(mnt, "var", "data.db"), work)
    pages = 2048
    if not os.path.exists(db):
        with open(db, "wb") as f:
            for i in range(pages):
                f.write(text_lines(rng, 40, "row")[:4096].ljust(4096, b"\0"))
    with open(db, "r+b") as f:
        for i in sorted(rng.sample(range(pages), 200)):
            f.seek(i * 4096)
            f.write(text_lines(rng, 40, "upd%d" % n)[:4096].ljust(4096, b"\0"))
    # Documents edited in place.
    allfiles = files_under(mnt)
    texts = [p for p in rng.sample(allfiles, 400) if is_text(p)][:20]
    for p in texts:
        edit_in_place(guarded(p, work), rng)
    # Small files written, others deleted.
    notes = os.path.join(mnt, "var", "notes")
    os.makedirs(notes, exist_ok=True)
    for i in range(30):
        with open(os.path.join(notes, "n%02d-%02d.txt" % (n, i)), "wb") as f:
            f.write(text_lines(rng, rng.randrange(10, 300), "n%d" % n))
    for p in rng.sample(allfiles, 20):
        if os.path.exists(p):
            os.unlink(guarded(p, work))


def build(work, force):
    meta = os.path.join(work, "corpus.json")
    if not force and os.path.exists(meta):
        with open(meta) as f:
            m = json.load(f)
        if m.get("version") == CORPUS_VERSION and all(
                os.path.exists(os.path.join(work, "img", i)) for i in m["images"]):
            print("corpus: %s is built (--force rebuilds it)" % work)
            return
    t0 = time.time()
    for d in ("img", "trees", "mnt"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
        os.makedirs(os.path.join(work, d))
    img = lambda name: os.path.join(work, "img", name + ".img")
    print("corpus: trees ...", flush=True)
    trees = {"a1": "/usr/share/doc", "a2": build_tree2(work),
             "a3": build_tree3(work), "a4": build_tree4(work)}
    for i, (name, tree) in enumerate(sorted(trees.items())):
        print("corpus: mke2fs -d %s -> %s.img" % (tree, name), flush=True)
        mkfs(tree, img(name), "6e626463-6173-4000-8000-00000000000%d" % (i + 1))
    shutil.rmtree(os.path.join(work, "trees"))

    pool = package_pool()
    live = os.path.join(work, "b-live.img")
    run("cp", "--sparse=always", img("a1"), live)
    mnt = os.path.join(work, "mnt")
    nights = ["a1"]
    for n in range(1, NIGHTS + 1):
        print("corpus: night %d (loop mount)" % n, flush=True)
        run("mount", "-o", "loop", live, mnt)
        try:
            night(mnt, n, pool, work)
            run("sync", "-f", mnt)
            run("fstrim", mnt)
        finally:
            run("umount", mnt)
        name = "b%02d" % n
        run("cp", "--sparse=always", live, img(name))
        nights.append(name)
    os.unlink(live)

    images = ["a1", "a2", "a3", "a4"] + nights[1:]
    m = {"version": CORPUS_VERSION,
         "images": [i + ".img" for i in images],
         "corpora": {"a": ["a1", "a2", "a3", "a4"],
                     "b": nights,
                     "c": ["a1"] * 10},
         "built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "seconds": round(time.time() - t0)}
    with open(meta, "w") as f:
        json.dump(m, f, indent=1)
    print("corpus: built in %d s" % m["seconds"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("corpus.py: needs root (mke2fs is fine, the loop mount is not)")
    os.makedirs(a.work, exist_ok=True)
    build(os.path.abspath(a.work), a.force)


if __name__ == "__main__":
    main()
