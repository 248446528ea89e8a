"""``dilithion-diff``: feed the C++ node and ours the same input and explain every difference.

See ``docs/DIFF.md``.  Modules: ``corpus`` (the JSON format), ``mine`` (the
built-in corpus's blocks), ``builtin`` (its steps), ``targets`` (the two node
processes), ``driver`` (the scripted wire peer), ``observe`` (what is compared),
``catalogue`` (known divergences), ``report``, ``runner`` and ``cli``.
"""
