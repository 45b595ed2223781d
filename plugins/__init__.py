"""The built-in backend plugins, one sub-package each.

Each is declared in the project's pyproject.toml under the entry-point group
``backplane.backends``, exactly as a third-party package declares its own; core never
imports a plugin by name.
"""
