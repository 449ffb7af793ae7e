#!/usr/bin/env python3
# The disk fills up: every data write under the store/disk fails with
# ENOSPC.  The client must see ENOSPC (see faulttest.py for the checks).
import faulttest

KNOWN_BUGS = {}

faulttest.main("fault: ENOSPC on writes", "ERRNO=ENOSPC OPS=write AFTER=0",
               faulttest.errno.ENOSPC, KNOWN_BUGS)
