"""Never finishes being imported, as one waiting on a wedged driver or a lock would."""

import threading

from bp_isolation import Inert

threading.Event().wait()  # never set


class Backend(Inert):
    name = "hang-at-import"
