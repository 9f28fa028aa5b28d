"""triaged core: message model, queue, store, dispatcher, config, daemon lifecycle and CLI.

Knows no channel except as import strings in :mod:`router.registry`.
"""
