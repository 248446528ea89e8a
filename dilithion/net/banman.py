"""Bans and discouragement, as Bitcoin Core's ``banman.cpp`` does them.

The C++ node has one dormant in-memory set ``banned_ips`` in ``CPeerManager``
(``net`` 4.5): nothing ever calls it.  Here two different things replace it:

* **Discouragement** (:meth:`BanMan.discourage`): what misbehaviour earns.  A
  bounded, in-memory, time-limited set of hosts (Core: a rolling bloom filter
  of 50,000 entries).  It is not a ban: the host's connections are closed now,
  and a new inbound connection from it is accepted only while more than one
  slot is free and is the first to be evicted when the table is full, so a
  shared address (NAT, Tor exit, 127.0.0.1 of local tools) is never locked out.
* **Bans** (:meth:`BanMan.ban`): only by the operator (RPC ``setban`` or an
  edited ``banlist.json``), by IP or subnet, with an expiry, persisted in the
  datadir (written atomically) and reloaded at start.  A banned host's
  connections are refused, not dialled, and all closed.

Honest misconfiguration (wrong network magic) earns neither: it is logged,
not scored, and the transport just disconnects.  Misbehaviour is scored by the
owner of the scores, :meth:`PeerManager.misbehaving
<dilithion.net.peers.PeerManager.misbehaving>`, which calls
:meth:`BanMan.discourage` at the threshold (``_cs_banned`` after ``_cs_peers``).
"""
from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loguru import logger

from dilithion.node.metrics import NULL_METRICS, Metrics
__all__ = ["BanMan", "BanEntry", "BANLIST_FILE", "DEFAULT_BANTIME", "DEFAULT_DISCOURAGE_TIME",
           "MAX_DISCOURAGED", "parse_subnet"]

BANLIST_FILE = "banlist.json"
#: ``setban`` without a ban time (Core's ``DEFAULT_MISBEHAVING_BANTIME``, 24 h).
DEFAULT_BANTIME = 86_400
#: How long a discouraged host stays discouraged.
DEFAULT_DISCOURAGE_TIME = 3_600
#: Entries of the discouraged set (Core's rolling bloom filter size); the oldest go first.
MAX_DISCOURAGED = 50_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_subnet(text: str) -> Network:
    """``1.2.3.4`` (a /32), ``1.2.3.0/24`` or ``1.2.3.0/255.255.255.0``; ValueError otherwise.

    Host bits of a subnet are cleared, as Core's ``CSubNet`` does."""
    return ipaddress.ip_network(text.strip(), strict=False)


@dataclass
class BanEntry:
    """One manual ban (Core ``CBanEntry``): wall-clock creation and expiry, seconds."""

    subnet: Network
    created: float
    until: float

    def to_json(self) -> dict:
        return {"address": str(self.subnet), "ban_created": int(self.created),
                "banned_until": int(self.until)}


class BanMan:
    """Manual bans (persisted) and discouraged hosts (in memory) of one node; replaces
    the C++ ``CPeerManager::banned_ips`` set (Core: ``BanMan``).

    Ownership: shared by every thread (the network thread asks on accept, the
    handler threads discourage, RPC threads ban); ``_cs_banned`` guards
    ``_banned``, ``_discouraged`` and the file write.  Callers may hold
    ``PeerManager._cs_peers`` when they call in (lock order: ``_cs_peers`` then
    ``_cs_banned``); nothing here calls out while holding ``_cs_banned``
    except the metrics, which lock only themselves.
    """

    def __init__(self, path: Path | None = None, *, metrics: Metrics = NULL_METRICS,
                 discourage_time: float = DEFAULT_DISCOURAGE_TIME,
                 max_discouraged: int = MAX_DISCOURAGED,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self.metrics = metrics
        self.discourage_time = discourage_time
        self.max_discouraged = max_discouraged
        self._clock = clock
        self._cs_banned = threading.Lock()
        self._banned: dict[str, BanEntry] = {}
        self._discouraged: OrderedDict[str, float] = OrderedDict()   # host -> expiry
        if self.path is not None:
            self._load()

    # -- manual bans ---------------------------------------------------------------
    def ban(self, target: str | Network, bantime: float | None = None,
            absolute: bool = False) -> bool:
        """Ban an IP or subnet until ``now + bantime`` (or until ``bantime`` when
        ``absolute``); False if exactly that subnet is already banned.  Persisted.

        C++: ``CPeerManager::BanIP`` (and Core's ``BanMan::Ban``).  ValueError for bad text.
        """
        subnet = target if not isinstance(target, str) else parse_subnet(target)
        now = self._clock()
        if bantime is None or bantime <= 0:
            bantime = DEFAULT_BANTIME
        until = float(bantime) if absolute else now + float(bantime)
        with self._cs_banned:
            self._sweep_locked(now)
            if str(subnet) in self._banned:
                return False
            self._banned[str(subnet)] = BanEntry(subnet, now, until)
            self._changed_locked()
        logger.info(f"[P2P] Banned {subnet} until {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))}")
        return True

    def unban(self, target: str | Network) -> bool:
        """Lift a manual ban of exactly that IP or subnet; False if there was none.

        C++: ``CPeerManager::UnbanIP``."""
        subnet = target if not isinstance(target, str) else parse_subnet(target)
        with self._cs_banned:
            if self._banned.pop(str(subnet), None) is None:
                return False
            self._changed_locked()
        logger.info(f"[P2P] Unbanned {subnet}")
        return True

    def clear_banned(self) -> None:
        """Lift every manual ban (C++ ``CPeerManager::ClearBans``); discouragement stays."""
        with self._cs_banned:
            self._banned.clear()
            self._changed_locked()
        logger.info("[P2P] Cleared all bans")

    def is_banned(self, host: str) -> bool:
        """Is ``host`` inside a manual ban in force (C++ ``CPeerManager::IsBanned``)?"""
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        with self._cs_banned:
            self._sweep_locked(self._clock())
            return any(addr in e.subnet for e in self._banned.values())

    def list_banned(self) -> list[BanEntry]:
        """The bans in force, oldest first (RPC ``listbanned``)."""
        with self._cs_banned:
            self._sweep_locked(self._clock())
            return sorted(self._banned.values(), key=lambda e: (e.created, str(e.subnet)))

    # -- discouragement -------------------------------------------------------------
    def discourage(self, host: str) -> None:
        """Remember ``host`` as misbehaving for ``discourage_time`` (Core ``BanMan::Discourage``;
        what the dormant C++ ``CPeerManager::BanPeer`` would do after ``Misbehaving``)."""
        with self._cs_banned:
            self._discouraged.pop(host, None)
            self._discouraged[host] = self._clock() + self.discourage_time
            while len(self._discouraged) > self.max_discouraged:
                self._discouraged.popitem(last=False)
        self.metrics.peer_discouraged.inc()

    def is_discouraged(self, host: str) -> bool:
        with self._cs_banned:
            until = self._discouraged.get(host)
            if until is None:
                return False
            if self._clock() >= until:
                del self._discouraged[host]
                return False
            return True

    # -- internals (under _cs_banned) -------------------------------------------------
    def _sweep_locked(self, now: float) -> None:
        expired = [key for key, e in self._banned.items() if e.until <= now]
        for key in expired:
            del self._banned[key]
        if expired:
            logger.info(f"[P2P] Ban expired: {', '.join(expired)}")
            self._changed_locked()

    def _changed_locked(self) -> None:
        self.metrics.banned_hosts.set(len(self._banned))
        if self.path is not None:
            self._write_locked()

    def _write_locked(self) -> None:
        """``banlist.json`` atomically: a temporary file, fsync, rename, fsync the directory."""
        data = {"version": 1, "banned": [e.to_json() for e in self._banned.values()]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:       # the bans still hold in memory
            logger.error(f"[P2P] Cannot write {self.path}: {exc}")

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.error(f"[P2P] Ignoring unreadable ban list {self.path}: {exc}")
            return
        now = self._clock()
        for item in data.get("banned", []) if isinstance(data, dict) else []:
            try:
                subnet = parse_subnet(str(item["address"]))
                entry = BanEntry(subnet, float(item.get("ban_created", now)),
                                 float(item["banned_until"]))
            except (KeyError, TypeError, ValueError):
                logger.warning(f"[P2P] Skipping bad entry in {self.path}: {item!r}")
                continue
            if entry.until > now:
                self._banned[str(subnet)] = entry
        self.metrics.banned_hosts.set(len(self._banned))
        logger.info(f"[P2P] Loaded {len(self._banned)} ban(s) from {self.path}")
