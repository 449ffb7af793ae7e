#!/usr/bin/env python3
# Power-loss simulation of flatfile (issue 10; the simulator and
# its workloads are in tests/powerloss/, README.md there).  One TAP line
# per workload (POWERLOSS_CUTS states each, 200 in `make check`), then
# the regression cases of the known findings (expected failures).
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "powerloss"))
import powerloss  # noqa: E402

powerloss.tap_main("flatfile")
