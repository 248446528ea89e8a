"""Defects of the metrics: a figure the gate reads that the node does not export."""
from __future__ import annotations

from defects import defect


@defect("no-send-timeout-metric", "send_timeout_errors_total is not exported (the counter"
        " lives on, off the registry)")
def no_send_timeout_metric() -> None:
    from dilithion.node.metrics import NodeMetrics
    original = NodeMetrics.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.registry.unregister(self.send_timeout_errors)
    NodeMetrics.__init__ = init
