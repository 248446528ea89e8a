"""The JSON-RPC envelope: request body in, response body out (``src/rpc/server.*``).

The body is parsed as JSON: standard ``params`` arrays/objects as well as the
C++ ``[{...}]`` convention, batches, ids echoed as sent, error messages
escaped, real -32700/-32600/-32602 codes (``cli 6.3`` #29-#32).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from loguru import logger

from dilithion.rpc.methods import (RPC_INTERNAL_ERROR, RPC_INVALID_PARAMS, RPC_INVALID_REQUEST,
                                   RPC_METHOD_NOT_FOUND, RPC_PARSE_ERROR, RPCError, RPCMethod)
from dilithion.rpc.params import ParamsError, bind_params

__all__ = ["JSONRPCDispatcher"]


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _error_response(code: int, message: str, request_id: Any) -> dict:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}


class JSONRPCDispatcher:
    """Request body in, response body out; stateless, so any thread may call it."""

    def __init__(self, methods: Mapping[str, RPCMethod]) -> None:
        self._methods = dict(methods)

    def handle(self, body: bytes, seen: list[str] | None = None) -> str:
        """Parse a request or batch and return the JSON response text.

        ``seen`` (optional) receives the name of each method called (``other``
        for names not served), for the request metrics.

        C++: ``ParseRPCRequest`` into ``struct RPCRequest``, and ``SerializeResponse``.
        """
        try:
            payload = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):           # includes UnicodeDecodeError
            return _dump(_error_response(RPC_PARSE_ERROR, "Parse error", None))
        if isinstance(payload, list):
            if not payload:
                return _dump(_error_response(RPC_INVALID_REQUEST, "Invalid Request: empty batch",
                                             None))
            return "[" + ",".join(self._handle_one(item, seen) for item in payload) + "]"
        return self._handle_one(payload, seen)

    def _handle_one(self, request: Any, seen: list[str] | None = None) -> str:
        """Run one request object and build its response (C++ ``ExecuteRPC``; the
        ``struct RPCResponse`` and ``RPCResponse::Success`` it fills)."""
        if not isinstance(request, dict):
            return _dump(_error_response(RPC_INVALID_REQUEST,
                                         "Invalid Request: expected a JSON object", None))
        request_id = request.get("id")
        if request_id is not None and (isinstance(request_id, bool)
                                       or not isinstance(request_id, (str, int, float))):
            return _dump(_error_response(RPC_INVALID_REQUEST,
                                         "Invalid Request: id must be a string, number or null",
                                         None))
        method_name = request.get("method")
        if not isinstance(method_name, str):
            return _dump(_error_response(RPC_INVALID_REQUEST,
                                         "Invalid Request: method must be a string", request_id))
        method = self._methods.get(method_name)
        if seen is not None:
            seen.append(method_name if method is not None else "other")
        if method is None:
            return _dump(_error_response(RPC_METHOD_NOT_FOUND, "Method not found", request_id))
        try:
            params = bind_params(method_name, request.get("params"))
            result = method.handler(**params)
            return _dump({"jsonrpc": "2.0", "result": result, "id": request_id})
        except ParamsError as exc:
            return _dump(_error_response(RPC_INVALID_PARAMS, str(exc), request_id))
        except RPCError as exc:
            return _dump(_error_response(exc.code, exc.message, request_id))
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the connection
            logger.opt(exception=exc).error(f"[RPC] {method_name} failed")
            return _dump(_error_response(RPC_INTERNAL_ERROR, str(exc) or type(exc).__name__,
                                         request_id))
