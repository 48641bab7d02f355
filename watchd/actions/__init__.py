"""worker → action: every action kind, one module each, listed in ``registry.KINDS``.

A kind's module holds its schema, its compiled form (an ``ActionSpec``: how it is
performed, killed, described by ``explain`` and logged) and its ``KIND`` entry. The rules
file's schema and the compile step are built from this list: adding a kind is one module
and one line in ``registry.py``.
"""
