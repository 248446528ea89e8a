"""Transport-only nodes: a ``ConnectionManager`` and its ``NetMessageProcessor``, no chain.

For the tests of the P2P transport itself (framing, handshake, timers, bad
input): what a peer experiences of the two P2P threads without block relay,
storage or RPC around them.  The ``nodes`` fixture in ``tests/conftest.py``
is a :class:`NodeFactory`.
"""
from __future__ import annotations

from dilithion.core.chainparams import ChainParams
from dilithion.net.connection import TransportConfig, send_timeout_ms_from_env
from dilithion.net.net_processing import NetMessageProcessor
from dilithion.net.net_transport import ConnectionManager
from dilithion.node.context import NodeContext
from dilithion.node.init import attach_processor
from dilithion.node.metrics import NodeMetrics

__all__ = ["NodeFactory", "transport_metric"]


class NodeFactory:
    """Builds started transports (a :class:`ConnectionManager` with its
    :class:`NetMessageProcessor`) on fresh contexts and stops them all at the end.

    Each transport gets its own context, metrics and peer table, so bans of the
    shared loopback host never leak between tests.  ``processor(cm)`` and
    ``ctx(cm)`` give a transport's message processor and context.
    """

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.managers = []
        self._parts: dict[int, tuple] = {}

    def __call__(self, params=None, listen_host: str | None = "127.0.0.1", listen_port: int = 0,
                 **kwargs):
        params = params or ChainParams.regtest()
        ctx = NodeContext(params, self.tmp_path / f"n{len(self.managers)}", hasher=None,
                          metrics=NodeMetrics(process_metrics=False))
        kwargs.setdefault("send_timeout_ms", send_timeout_ms_from_env(params.send_timeout_ms))
        cm = ConnectionManager(params.magic, TransportConfig(**kwargs), listen_host=listen_host,
                               listen_port=listen_port, metrics=ctx.metrics,
                               on_fatal=ctx.fatal_error)
        processor = NetMessageProcessor(cm, metrics=ctx.metrics)
        attach_processor(cm, processor)
        processor.start()
        cm.start()
        self.managers.append(cm)
        self._parts[id(cm)] = (ctx, processor)
        return cm

    def processor(self, cm):
        return self._parts[id(cm)][1]

    def ctx(self, cm):
        return self._parts[id(cm)][0]

    def stop(self, cm) -> None:
        """Stop one transport and its processor (as the node does: transport first)."""
        cm.stop()
        self.processor(cm).stop()

    def stop_all(self) -> None:
        for cm in self.managers:
            self.stop(cm)


def transport_metric(cm, name: str, **labels) -> float:
    """Current value of a sample in a transport's metrics (0 when absent)."""
    return cm.metrics.registry.get_sample_value(name, labels) or 0.0
