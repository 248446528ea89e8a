"""``dilithion-cli``: a bitcoin-cli style client that works with the Python and the C++ node.

The C++ server reads one 4096-byte chunk and ignores ``Content-Length``
(``cli`` 3.3), so the client follows ``cli`` 3.11 for every request: the whole
HTTP request goes out in ONE ``sendall`` on a fresh connection, at most 4096
bytes, with the body ``{"jsonrpc":"2.0","method":"<m>","params":[{...}],"id":1}``
(compact, keys in the C++ scanner's order), and the reply is read to EOF.
The Python server accepts exactly the same bytes, so one transport serves
both nodes.  ``--allow-large-request`` lifts the 4096-byte cap for the Python
node only (e.g. ``sendrawtransaction`` of a signed transaction).

Exit status: 0 success, 1 usage error, 2 connection failure, 3 authentication
refused (401, or 403 lockout), 5 RPC error or any non-JSON-RPC refusal.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

from dilithion.core.chainparams import params_for
from dilithion.rpc.auth import (CONF_FILENAME, ConfigError, basic_auth_header, read_config,
                                read_cookie)
from dilithion.rpc.params import ParamKind, signature

__all__ = ["RPCClient", "RPCClientError", "UsageError", "ConnectionFailed", "AuthFailed",
           "RPCCallError", "ServerRefused", "encode_request_body", "args_to_params",
           "format_result", "cli", "CPP_MAX_REQUEST", "EXIT_OK", "EXIT_USAGE",
           "EXIT_CONNECTION", "EXIT_AUTH", "EXIT_RPC"]

CPP_MAX_REQUEST = 4096
EXIT_OK, EXIT_USAGE, EXIT_CONNECTION, EXIT_AUTH, EXIT_RPC = 0, 1, 2, 3, 5
_METHOD_RE = re.compile(r"^[A-Za-z0-9_]+$")
#: Characters the C++ params scanner cannot carry inside a string (cli 3.11 rule 5).
_FORBIDDEN_CHARS = re.compile(r'["\\\]\x00-\x1f\x7f]')


class RPCClientError(Exception):
    exit_code = EXIT_RPC


class UsageError(RPCClientError):
    exit_code = EXIT_USAGE


class ConnectionFailed(RPCClientError):
    exit_code = EXIT_CONNECTION


class AuthFailed(RPCClientError):
    exit_code = EXIT_AUTH


class ServerRefused(RPCClientError):
    """A reply that is not JSON-RPC (the C++ bodies of ``cli`` 3.10, HTTP errors)."""


class RPCCallError(RPCClientError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"error code: {code}\nerror message: {message}")
        self.code = code
        self.message = message


# -- request encoding ------------------------------------------------------------------
def _encode_value(name: str, value: Any) -> str:
    """One JSON value the C++ scanner can read back (``cli`` 3.11 rules 5 and 6)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, str):
        if _FORBIDDEN_CHARS.search(value):
            raise UsageError(f"{name}: strings may not contain '\"', '\\', ']' or control"
                             " characters (the C++ node cannot read them)")
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    raise UsageError(f"{name}: cannot send a value of type {type(value).__name__}")


def encode_request_body(method: str, params: dict | list | None) -> bytes:
    """``{"jsonrpc":"2.0","method":"<m>","params":<P>,"id":1}`` with ``<P>`` = ``[{...}]`` or ``[]``.

    A dict is sent in the C++ convention (one object inside an array, keys in
    the given order); a list is sent as JSON-RPC positional params.
    """
    if not _METHOD_RE.match(method):
        raise UsageError(f"invalid method name: {method!r}")
    if isinstance(params, dict) and params:
        inner = ",".join(f"{json.dumps(k)}:{_encode_value(k, v)}" for k, v in params.items())
        encoded = "[{" + inner + "}]"
    elif isinstance(params, list) and params:
        encoded = "[" + ",".join(_encode_value(f"argument {i + 1}", v)
                                 for i, v in enumerate(params)) + "]"
    else:
        encoded = "[]"
    return (f'{{"jsonrpc":"2.0","method":"{method}","params":{encoded},"id":1}}').encode("utf-8")


def _convert_arg(name: str, kind: ParamKind, text: str) -> Any:
    if kind is ParamKind.INT:
        if not text.isdigit():
            raise UsageError(f"{name} must be a non-negative integer, got {text!r}")
        return int(text)
    if kind is ParamKind.BOOL:
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise UsageError(f"{name} must be true or false, got {text!r}")
        return lowered in ("true", "1")
    if kind is ParamKind.AMOUNT:
        try:
            amount = Decimal(text)
        except InvalidOperation:
            amount = None
        if (amount is None or not amount.is_finite() or amount < 0 or "e" in text.lower()
                or -amount.as_tuple().exponent > 8):
            raise UsageError(f"{name} must be a plain decimal amount with at most 8 decimals,"
                             f" got {text!r}")
        return amount
    return text


def _parse_json_or_text(text: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError:
        return text


def args_to_params(method: str, args: list[str]) -> dict | list:
    """Command-line arguments -> the params object (names in ``cli`` 7.5 order).

    Known methods take positional values and/or ``name=value``; ``stop`` takes
    the word ``confirm``; methods the client does not know get a JSON-RPC
    positional array (each argument parsed as JSON when it is JSON).
    """
    sig = signature(method)
    if method == "stop" and args:
        if len(args) > 1 or args[0].lower() not in ("confirm", "true", "confirm=true",
                                                     "false", "confirm=false"):
            raise UsageError("usage: stop [confirm]")
        return {"confirm": args[0].lower() != "false" and args[0].lower() != "confirm=false"}
    if not sig:
        return [_parse_json_or_text(a) for a in args]
    by_name = {p.name: p for p in sig}
    named: dict[str, Any] = {}
    positional: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in by_name:
            if key in named:
                raise UsageError(f"{key} given twice")
            named[key] = _convert_arg(key, by_name[key].kind, value)
        else:
            positional.append(arg)
    if len(positional) > len(sig):
        raise UsageError(f"{method} takes at most {len(sig)} arguments:"
                         f" {' '.join(p.name for p in sig)}")
    for p, text in zip(sig, positional):
        if p.name in named:
            raise UsageError(f"{p.name} given twice")
        named[p.name] = _convert_arg(p.name, p.kind, text)
    missing = [p.name for p in sig if p.required and p.name not in named]
    if missing:
        raise UsageError(f"{method}: missing argument {missing[0]}"
                         f" (usage: {method} {' '.join(p.name for p in sig)})")
    return {p.name: named[p.name] for p in sig if p.name in named}


# -- transport ---------------------------------------------------------------------------
@dataclass
class HTTPReply:
    status: int
    body: bytes


def _parse_reply(raw: bytes) -> HTTPReply:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, rest = raw.partition(b"\n\n")
    lines = head.decode("latin-1").splitlines()
    if not sep or not lines or not lines[0].startswith("HTTP/"):
        raise ServerRefused("error: the server's reply is not HTTP")
    parts = lines[0].split()
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        raise ServerRefused(f"error: bad HTTP status line: {lines[0]!r}") from None
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = int(value.strip())
    # The C++ 413 declares one byte less than it sends (cli 3.3): do not trust it there.
    body = rest if length is None or status == 413 else rest[:length]
    return HTTPReply(status, body)


def _reply_complete(raw: bytes) -> bool:
    try:
        reply = _parse_reply(raw)
    except ServerRefused:
        return False
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    match = re.search(rb"content-length:\s*(\d+)", head)
    return match is not None and len(reply.body) >= int(match.group(1))


class RPCClient:
    """One JSON-RPC call per fresh TCP connection (``cli`` 3.11).  Not shared between threads."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8332, user: str | None = None,
                 password: str | None = None, timeout: float = 30.0,
                 max_request_bytes: int | None = CPP_MAX_REQUEST) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._auth = basic_auth_header(user, password) if user and password else None
        self.max_request_bytes = max_request_bytes

    def build_request(self, method: str, params: dict | list | None) -> bytes:
        body = encode_request_body(method, params)
        host = f"[{self.host}]" if ":" in self.host else self.host
        headers = ["POST / HTTP/1.1", f"Host: {host}:{self.port}",
                   "Content-Type: application/json", f"Content-Length: {len(body)}",
                   "Connection: close"]
        if self._auth:
            headers.append(f"Authorization: {self._auth}")
        request = ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + body
        if self.max_request_bytes is not None and len(request) > self.max_request_bytes:
            raise UsageError(f"error: the request is {len(request)} bytes; the C++ node reads at"
                             f" most {self.max_request_bytes} bytes (use --allow-large-request"
                             " with the Python node)")
        return request

    def exchange(self, request: bytes) -> HTTPReply:
        where = f"{self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise ConnectionFailed(f"error: could not connect to {where}: {exc}") from None
        raw = b""
        with sock:
            try:
                sock.sendall(request)
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    raw += chunk
            except (ConnectionResetError, BrokenPipeError) as exc:
                if not _reply_complete(raw):         # a reset after a whole reply is harmless
                    raise ConnectionFailed(f"error: connection to {where} lost: {exc}") from None
            except OSError as exc:                   # includes timeouts
                raise ConnectionFailed(f"error: no reply from {where}: {exc}") from None
        if not raw:
            raise ConnectionFailed(f"error: {where} closed the connection without replying")
        return _parse_reply(raw)

    def call(self, method: str, params: dict | list | None = None) -> Any:
        reply = self.exchange(self.build_request(method, params))
        try:
            payload = json.loads(reply.body, parse_float=Decimal)
        except ValueError:
            payload = None
        if reply.status in (401, 403):
            raise AuthFailed(_refusal_text(payload, reply))
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            err = payload["error"]
            raise RPCCallError(err.get("code"), str(err.get("message")))
        if isinstance(payload, dict) and "result" in payload and payload.get("error") is None:
            return payload["result"]
        raise ServerRefused(_refusal_text(payload, reply))


def _refusal_text(payload: Any, reply: HTTPReply) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return f"error: {payload['error']} (HTTP {reply.status})"
    return f"error: HTTP {reply.status}: {reply.body.decode('utf-8', 'replace')[:200]}"


# -- output ------------------------------------------------------------------------------
def _pretty(value: Any, indent: int = 0) -> str:
    """Indented JSON that keeps amounts exactly as the server wrote them (Decimal)."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {_pretty(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + _pretty(v, indent + 1) for v in value) + f"\n{pad}]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def format_result(result: Any) -> str | None:
    """Strings bare, ``null`` as nothing, everything else as indented JSON."""
    if result is None:
        return None
    if isinstance(result, str):
        return result
    return _pretty(result)


# -- command line ----------------------------------------------------------------------------
def _resolve_credentials(rpcuser, rpcpassword, datadir: Path) -> tuple[str | None, str | None]:
    """Flags, else ``dilithion.conf``, else the cookie the node wrote, else none (C++ node)."""
    if rpcuser or rpcpassword:
        if not (rpcuser and rpcpassword):
            raise UsageError("--rpcuser and --rpcpassword must be given together")
        return rpcuser, rpcpassword
    try:
        conf = read_config(datadir / CONF_FILENAME)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if conf.get("rpcuser") and conf.get("rpcpassword"):
        return conf["rpcuser"], conf["rpcpassword"]
    cookie = read_cookie(datadir)
    return cookie if cookie else (None, None)


class _CLICommand(click.Command):
    """click with bitcoin-cli exit codes: usage errors exit 1 (click's default is 2)."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_USAGE)
        except click.Abort:
            sys.exit(EXIT_USAGE)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.command(cls=_CLICommand, context_settings={"allow_interspersed_args": False,
                                                  "help_option_names": ["-h", "--help"]})
@click.option("--testnet", is_flag=True, help="Use the testnet (RPC port 18332).")
@click.option("--regtest", is_flag=True, help="Use the Python-only regtest (RPC port 19332).")
@click.option("--datadir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory holding .cookie / dilithion.conf"
                   " (default ~/.dilithion, ~/.dilithion-testnet, ~/.dilithion-regtest).")
@click.option("--rpcconnect", default=None, help="Server address (env DILITHION_RPC_HOST, default 127.0.0.1).")
@click.option("--rpcport", type=click.IntRange(1, 65535), default=None,
              help="Server port (env DILITHION_RPC_PORT, default by network).")
@click.option("--rpcuser", default=None, help="RPC user (default: dilithion.conf, then the cookie).")
@click.option("--rpcpassword", default=None, help="RPC password.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds to wait for the server.")
@click.option("--allow-large-request", is_flag=True,
              help="Allow requests over 4096 bytes (the Python node only; the C++ node truncates them).")
@click.argument("method")
@click.argument("args", nargs=-1)
def cli(testnet, regtest, datadir, rpcconnect, rpcport, rpcuser, rpcpassword, timeout,
        allow_large_request, method, args) -> int:
    """Send METHOD with ARGS to a Dilithion node's JSON-RPC server and print the result.

    Positional ARGS map to the method's named parameters (e.g. getblockhash
    HEIGHT, getblock HASH, addnode NODE [COMMAND]); NAME=VALUE also works.
    """
    try:
        if testnet and regtest:
            raise UsageError("--testnet and --regtest are mutually exclusive")
        params = params_for("testnet" if testnet else "regtest" if regtest else "mainnet")
        datadir = datadir if datadir is not None else Path.home() / params.data_dir_name
        host = rpcconnect or os.environ.get("DILITHION_RPC_HOST") or "127.0.0.1"
        port = rpcport or _env_port() or params.rpc_port
        user, password = _resolve_credentials(rpcuser, rpcpassword, datadir)
        client = RPCClient(host, port, user, password, timeout,
                           None if allow_large_request else CPP_MAX_REQUEST)
        result = client.call(method, args_to_params(method, list(args)))
    except RPCClientError as exc:
        click.echo(str(exc), err=True)
        return exc.exit_code
    text = format_result(result)
    if text is not None:
        click.echo(text)
    return EXIT_OK


def _env_port() -> int | None:
    text = os.environ.get("DILITHION_RPC_PORT")
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"DILITHION_RPC_PORT must be a port number, got {text!r}")
    return int(text)
