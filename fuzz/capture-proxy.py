#!/usr/bin/env python3
# Records what real NBD clients send, for the seed corpora: listens on
# FRONT, forwards to a server at BACK, and writes each connection's
# client-to-server bytes (from the client flags on, since the server
# speaks first) to OUTDIR/connNNN.  The captured-* seeds were made with
#   minnbd -U back.sock flatfile file=disk.img
#   python3 capture-proxy.py front.sock back.sock out
# and nbdinfo (--json, --list, --map), qemu-img (info, map), nbdcopy,
# qemu-io (write/read/discard/flush, write -z) and nbdsh; request seeds
# are the same streams with the handshake cut off and selector 0 prepended.
#   python3 capture-proxy.py FRONT BACK OUTDIR
import os, socket, sys, threading
front, back, outdir = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(outdir, exist_ok=True)
if os.path.exists(front): os.unlink(front)
ls = socket.socket(socket.AF_UNIX); ls.bind(front); ls.listen(8)
n = 0
def pump(a, b, rec):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            if rec is not None: rec.append(d)
            b.sendall(d)
    except OSError: pass
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
def handle(c, k):
    s = socket.socket(socket.AF_UNIX); s.connect(back)
    rec = []
    t1 = threading.Thread(target=pump, args=(c, s, rec)); t2 = threading.Thread(target=pump, args=(s, c, None))
    t1.start(); t2.start(); t1.join(); t2.join()
    with open(os.path.join(outdir, "conn%03d" % k), "wb") as f: f.write(b"".join(rec))
while True:
    c, _ = ls.accept(); n += 1
    threading.Thread(target=handle, args=(c, n)).start()
