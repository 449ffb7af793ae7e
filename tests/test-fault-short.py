#!/usr/bin/env python3
# The disk fills up in the middle of a write: the first failing write is
# short (half its bytes), the calls after it fail with ENOSPC.  A backend
# must retry the rest of a short write (POSIX) and so report ENOSPC, not
# EIO, and never acknowledge data it did not write.
import faulttest

KNOWN_BUGS = {}

faulttest.main("fault: short write then ENOSPC",
               "ERRNO=ENOSPC OPS=write AFTER=0 SHORT=1",
               faulttest.errno.ENOSPC, KNOWN_BUGS)
