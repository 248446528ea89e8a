"""In-process fuzz targets: the node's own counterparts of the C++ libFuzzer targets.

The C++ node ships twelve targets under ``src/test/fuzz/``; each has one here
(:data:`registry.TARGETS`), a function ``(data: bytes) -> None`` that decodes
fuzz bytes into the inputs of our subject, runs it and raises
:class:`provider.PropertyViolation` naming the property that broke.  Seeds are
built from the C++ vectors and the mined blocks (:mod:`seeds`); the seeded
mutation loop (:mod:`engine`) runs in the default test suite, ``atheris``
(:mod:`coverage_run`) on demand.  docs/FUZZING.md is the manual.
"""
