"""Changes the environment, the recursion limit and the warnings filters while being
imported."""

import os
import sys
import warnings

from bp_isolation import Inert

os.environ["BP_ISOLATION_FIXTURE"] = "set at import"
sys.setrecursionlimit(sys.getrecursionlimit() + 1000)
warnings.simplefilter("ignore", RuntimeWarning)  # (hides numpy's overflow warnings)


class Backend(Inert):
    name = "changes-process"
