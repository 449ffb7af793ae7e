#!/usr/bin/env python3
# The disk fails: writes and syncs under the store/disk fail with EIO.
# The client must see EIO (see faulttest.py for the checks).
import faulttest

KNOWN_BUGS = {}

faulttest.main("fault: EIO on writes and syncs",
               "ERRNO=EIO OPS=write,sync AFTER=0", faulttest.errno.EIO, KNOWN_BUGS)
