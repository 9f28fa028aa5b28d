"""The YAML rule engine: pure and synchronous, no I/O beyond reading the rule file.

Imports nothing from ``router`` (router imports rules).
"""
