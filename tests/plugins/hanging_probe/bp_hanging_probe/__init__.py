"""A backend whose probe hangs, as a driver call stuck on a wedged device would."""

import threading

from backplane import API_VERSION, Backend


class HangingBackend(Backend):
    name = "hanging-probe"
    api_version = API_VERSION
    priority = 50

    def probe(self):
        threading.Event().wait()  # never set
