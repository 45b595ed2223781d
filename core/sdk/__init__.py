"""The plugin SDK: the contract, kernel table, errors, hook specs and cache.

A backend plugin imports only from here, ``backplane.runtimes``, ``backplane.ops``
and ``backplane.model`` (and the names ``backplane`` itself exports).
"""
