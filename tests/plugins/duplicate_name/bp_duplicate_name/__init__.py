"""Declares the backend name ``example-numpy`` a second time; importing it fails loudly.

If discovery ever used this entry point instead of the first one, the example backend's
record would turn to ``failed`` with this message.
"""

raise RuntimeError("the duplicate 'example-numpy' entry point was imported and used")
