"""``dilithion-diff``: feed the C++ node and ours the same input and explain every difference.

See ``docs/DIFF.md``.  Modules: ``corpus`` (the JSON format), ``mine`` (the
built-in corpus's blocks), ``builtin`` (its steps), ``observe`` (what is compared),
``catalogue`` (known divergences), ``report``, ``runner`` and ``cli``.  The node
processes and the wire peer are the harness's (``dilithion.testing``).
"""
