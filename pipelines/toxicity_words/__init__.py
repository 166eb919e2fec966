"""Data for :mod:`pipelines.toxicity`: word lists (``*.txt``) and classifier weights (``*.json``).

A package (not just a folder) so that setuptools' package-data globs ship these files.
"""
