"""The hardware-characteristics database: one TOML file per SKU, beside this file.

The entries, their schema and the loader arrive with the hwdb work; this package is the
place they live, shipped as package data.
"""
