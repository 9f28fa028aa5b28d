"""The YAML rule engine: pure and synchronous, no I/O beyond reading the rule file.

Imports nothing from ``router`` (router imports rules). The flow, one module each:
``source`` (YAML with positions) → ``schema`` (pydantic models) → ``conditions`` (the
``when`` trees) → ``loader`` (semantic checks, ``RuleFileError``, ``RuleSet``) →
``compiler`` (automata, regex sets, rule index) → ``engine`` (``evaluate`` → ``Decision``).
``normalize``, ``fields``, ``patterns`` and ``calendars`` are shared by both evaluators;
``naive`` is the slow reference evaluator the property tests compare against.
"""
