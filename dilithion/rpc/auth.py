"""RPC credentials: the cookie file, ``dilithion.conf`` and HTTP Basic checks (``src/rpc/auth.*``).

The C++ node has the checking code but never configures it, so every caller
is accepted (``cli 6.3 #34``).  The Python node always authenticates, the way
bitcoind does: at start it writes a random cookie ``<datadir>/.cookie``
(``__cookie__:<64 hex>``, mode 0600) that any local client able to read the
datadir can use, and it also accepts ``rpcuser``/``rpcpassword`` from
``<datadir>/dilithion.conf``.  The cookie is deleted when the server stops.

Passwords are never compared directly: each accepted ``user:password`` is
kept as a salted SHA3-256 digest and the candidate's digest is compared with
``hmac.compare_digest`` against every entry, so neither the position of the
first differing byte nor which entry matched shows in the timing.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from loguru import logger

__all__ = ["COOKIE_USER", "COOKIE_FILENAME", "CONF_FILENAME", "ConfigError", "AuthResult",
           "Authenticator",
           "CookieFile", "read_config", "read_cookie", "parse_basic_auth", "basic_auth_header"]

COOKIE_USER = "__cookie__"
COOKIE_FILENAME = ".cookie"
CONF_FILENAME = "dilithion.conf"


class ConfigError(ValueError):
    """A config file the node must not start with; the message names file and line."""


def _hash_inside_password(raw: str) -> bool:
    """``rpcpassword=ab#cd``: a ``#`` glued to the value (not after a space)."""
    key, sep, value = raw.partition("=")
    if not sep or key.strip() != "rpcpassword" or "#" not in value:
        return False
    before = value.split("#", 1)[0]
    return bool(before.strip()) and not before[-1].isspace()


def read_config(path: Path) -> dict[str, str]:
    """``key=value`` lines of a config file; ``#`` starts a comment; missing file -> {}.

    The last occurrence of a key wins.  Lines without ``=`` are ignored with a
    warning rather than refusing to start.  A ``#`` in an ``rpcpassword`` value
    raises :class:`ConfigError`, as bitcoind does: it would start a comment and
    silently cut the password, so the operator's password would not work and
    nothing would say why (a comment after a space, ``rpcpassword=x  # note``,
    stays a comment).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if _hash_inside_password(raw):
            raise ConfigError(f"{path}:{lineno}: '#' is not allowed in rpcpassword (it starts a"
                              " comment and would cut the password): choose one without '#'")
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            logger.warning(f"{path}:{lineno}: ignoring line without key=value")
            continue
        values[key.strip()] = value.strip()
    return values


def read_cookie(datadir: Path) -> tuple[str, str] | None:
    """The ``(user, password)`` in ``<datadir>/.cookie``, or None if absent/unreadable."""
    try:
        text = (Path(datadir) / COOKIE_FILENAME).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep and user and password else None


def parse_basic_auth(value: str | None) -> tuple[str, str] | None:
    """``Basic <base64(user:password)>`` -> ``(user, password)``; None if malformed.

    Strict Base64 (the C++ decoder silently skips junk, ``cli`` 3.4); the
    scheme name is case-insensitive as RFC 7617 says.
    C++: ``ParseAuthHeader`` with ``Base64Decode``.
    """
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` header value for ``user``/``password`` (C++ ``Base64Encode``)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")


class AuthResult(Enum):
    OK = "ok"
    MISSING = "missing"        # no or malformed header: 401, not counted as a failure
    WRONG = "wrong"            # well-formed but wrong credentials: counts toward lockout


class Authenticator:
    """The set of accepted ``user:password`` pairs, stored as salted digests.

    Written once before the server starts (``add``), then only read by the
    handler threads, so it needs no lock.  C++: ``namespace RPCAuth``.
    """

    def __init__(self) -> None:
        """No credentials yet; one random salt for them all (C++ ``GenerateSalt``)."""
        self._salt = secrets.token_bytes(32)
        self._digests: list[bytes] = []
        self._users: list[str] = []

    def _digest(self, user: str, password: str) -> bytes:
        """Salted SHA3-256 of ``user:password`` (C++ ``HashPassword``)."""
        return hashlib.sha3_256(self._salt + f"{user}:{password}".encode("utf-8")).digest()

    def add(self, user: str, password: str) -> None:
        """Accept ``user``/``password``; both must be non-empty."""
        if not user or not password:
            raise ValueError("RPC user and password must both be non-empty")
        self._digests.append(self._digest(user, password))
        self._users.append(user)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, authorization: str | None) -> AuthResult:
        """Judge an ``Authorization`` header value in constant time.

        C++: ``AuthenticateRequest``, ``VerifyPassword`` and ``SecureCompare``.
        """
        return self.identify(authorization)[0]

    def identify(self, authorization: str | None) -> tuple[AuthResult, str | None]:
        """Like :meth:`check`, plus the user name accepted (None unless OK)."""
        creds = parse_basic_auth(authorization)
        if creds is None:
            return AuthResult.MISSING, None
        candidate = self._digest(*creds)
        matched: str | None = None
        for user, stored in zip(self._users, self._digests):
            # no early exit: timing independent of which entry matches
            if hmac.compare_digest(candidate, stored) and matched is None:
                matched = user
        return (AuthResult.OK, matched) if matched is not None else (AuthResult.WRONG, None)


@dataclass
class CookieFile:
    """``<datadir>/.cookie``: created by the server at start, removed at stop."""

    path: Path
    password: str = ""

    @classmethod
    def create(cls, datadir: Path) -> "CookieFile":
        """Write a fresh random cookie atomically with mode 0600.

        The file is written under a temporary name opened with ``O_EXCL`` and
        mode 0600, then renamed, so no other user can ever read a partial or
        world-readable cookie.
        """
        datadir = Path(datadir)
        datadir.mkdir(parents=True, exist_ok=True)
        cookie = cls(datadir / COOKIE_FILENAME, secrets.token_hex(32))
        tmp = datadir / f"{COOKIE_FILENAME}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(f"{COOKIE_USER}:{cookie.password}")
            os.chmod(tmp, 0o600)               # in case a umask/ACL widened it
            os.replace(tmp, cookie.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return cookie

    @property
    def user(self) -> str:
        return COOKIE_USER

    def remove(self) -> None:
        """Delete the cookie unless another process has replaced it since."""
        if read_cookie(self.path.parent) == (COOKIE_USER, self.password):
            self.path.unlink(missing_ok=True)
