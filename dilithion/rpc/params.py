"""Named RPC parameters: one table used by the server to bind and by ``dilithion-cli`` to build.

The C++ handlers scan the params text for quoted key names (``cli`` 3.7), so
the only request shape the C++ node understands is ``"params":[{"key":value}]``.
The Python server binds real JSON instead and accepts three shapes:

* the C++ convention, an array holding one object: ``[{"height": 5}]``;
* a JSON-RPC by-name object: ``{"height": 5}``;
* a JSON-RPC by-position array: ``[5]``, mapped to the names in table order.

The table order is also the order in which ``dilithion-cli`` emits keys,
which the C++ needs for ``gettxout`` and ``walletpassphrasechange`` (``cli`` 7.5).
Wallet methods are listed so that the client can talk to a C++ node's wallet;
the Python node does not serve them.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any

__all__ = ["ParamKind", "Param", "METHOD_PARAMS", "ParamsError", "signature", "bind_params"]


class ParamKind(Enum):
    STR = "a string"
    INT = "an integer"
    BOOL = "a boolean"
    AMOUNT = "an amount"


@dataclass(frozen=True)
class Param:
    name: str
    kind: ParamKind = ParamKind.STR
    required: bool = True


def _opt(name: str, kind: ParamKind = ParamKind.STR) -> Param:
    return Param(name, kind, required=False)


_S, _I, _B, _A = ParamKind.STR, ParamKind.INT, ParamKind.BOOL, ParamKind.AMOUNT

#: Method -> parameters in emission/positional order.  Methods not listed take none.
METHOD_PARAMS: dict[str, tuple[Param, ...]] = {
    # node methods served by the Python node
    "getblock": (Param("hash"),),
    "getblockhash": (Param("height", _I),),
    "getblockpropagation": (Param("hash"),),
    "sendrawtransaction": (Param("hex"),),
    "decoderawtransaction": (Param("hex"),),
    "gettransaction": (Param("txid"),),
    "addnode": (Param("node"), _opt("command")),
    "disconnectnode": (_opt("address"), _opt("nodeid", _I)),
    "setban": (Param("subnet"), Param("command"), _opt("bantime", _I), _opt("absolute", _B)),
    "help": (_opt("command"),),
    "stop": (_opt("confirm", _B),),
    # C++-only methods (wallet and unfinished ones), for dilithion-cli
    "sendtoaddress": (Param("address"), Param("amount", _A)),
    "signrawtransaction": (Param("hex"),),
    "getrawtransaction": (Param("txid"), _opt("verbosity", _I)),
    "gettxout": (Param("txid"), Param("n", _I)),
    "encryptwallet": (Param("passphrase"),),
    "walletpassphrase": (Param("passphrase"), _opt("timeout", _I)),
    "walletpassphrasechange": (Param("oldpassphrase"), Param("newpassphrase")),
}
#: Served by the Python node (the C++ handler never succeeds, ``cli`` 3.9).
METHOD_PARAMS["generatetoaddress"] = (Param("nblocks", _I), Param("address"), _opt("maxtries", _I))


class ParamsError(ValueError):
    """The params do not fit the method's signature (JSON-RPC -32602)."""


def signature(method: str) -> tuple[Param, ...]:
    return METHOD_PARAMS.get(method, ())


def _kind_matches(kind: ParamKind, value: Any) -> bool:
    if kind is ParamKind.STR:
        return isinstance(value, str)
    if kind is ParamKind.BOOL:
        return isinstance(value, bool)
    if kind is ParamKind.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def bind_params(method: str, raw: Any) -> dict[str, Any]:
    """Map the request's ``params`` onto ``method``'s named parameters.

    Returns only the parameters present (a JSON ``null`` counts as absent);
    raises :class:`ParamsError` with a message naming the parameter for a
    missing required one, a wrong JSON type, an unknown name or too many
    positional values.  C++: replaces ``SafeParseDouble``, ``SafeParseInt64`` and
    ``SafeParseUInt32``.
    """
    sig = signature(method)
    if raw is None:
        given: dict[str, Any] = {}
    elif isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict):
        given = dict(raw[0])                            # the C++ convention [{...}]
    elif isinstance(raw, dict):
        given = dict(raw)
    elif isinstance(raw, list):
        if len(raw) > len(sig):
            raise ParamsError(f"Too many parameters for {method}: expected at most {len(sig)},"
                              f" got {len(raw)}")
        given = {p.name: v for p, v in zip(sig, raw)}
    else:
        raise ParamsError("params must be an array or an object")

    known = {p.name for p in sig}
    unknown = sorted(k for k in given if k not in known)
    if unknown:
        accepted = ", ".join(p.name for p in sig) or "none"
        raise ParamsError(f"Unknown parameter {unknown[0]} for {method} (accepted: {accepted})")

    bound: dict[str, Any] = {}
    for p in sig:
        value = given.get(p.name)
        if value is None:
            if p.required:
                raise ParamsError(f"Missing {p.name} parameter")
            continue
        if not _kind_matches(p.kind, value):
            raise ParamsError(f"Invalid {p.name} parameter format (expected {p.kind.value})")
        bound[p.name] = value
    return bound
