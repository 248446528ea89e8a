"""``dilithion-lab``: the C++ team's mainnet-readiness checklist as a program.

It starts real ``dilithion-node`` processes on loopback, links them through
fault-injecting TCP proxies (:mod:`.proxy`), runs the checklist's scenarios
(:mod:`.scenarios`), measures propagation from each node's RPC
``getblockpropagation`` and metrics, writes ``results.json``, ``report.md``
and plots (:mod:`.report`), and evaluates the checklist's gates from those
results or from a live Prometheus server (:mod:`.gate`).  ``docs/LAB.md``.
"""
