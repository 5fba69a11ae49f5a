"""Sharding a fleet: one config file lists every camera of a site; each of N streamd processes (hosts, pods)
runs the cameras that a rendezvous hash of their names gives to its shard (docs/scaling.md).

Rendezvous (highest-random-weight) hashing: a camera goes to the shard whose hash of (shard, camera name)
is highest. Every process computes the same assignment from the names alone, with no coordination, and
going from N to N + 1 shards moves only the cameras the new shard wins, about 1/(N + 1) of them; the
others stay where they were. The hash is BLAKE2b, the same on every host and Python (Python's own hash()
of a string is salted per process).

Shards are numbered from 0, as the pods of a Kubernetes StatefulSet are: `--shard 0/3`, `1/3`, `2/3`.
`shard = "auto"` takes N from $STREAMD_SHARDS and the index from $STREAMD_SHARD_INDEX or, without it, from
the pod's ordinal: the number that ends the host name (`streamd-2`).
"""
from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

MAX_SHARDS = 1024
_SPEC = re.compile(r"^(\d+)/(\d+)$")
_ORDINAL = re.compile(r"-(\d+)$")

Named = TypeVar("Named")


@dataclass(frozen=True)
class Shard:
    index: int  # 0 .. count - 1
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse(spec: str) -> Shard:
    """Shard(I, N) from "I/N"; ValueError (saying what is wrong) for anything else."""
    match = _SPEC.match(spec.strip())
    if not match:
        raise ValueError(f'{spec!r} is not INDEX/COUNT (e.g. "0/3", shards numbered from 0) or "auto"')
    index, count = int(match[1]), int(match[2])
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"{spec!r}: the shard count must be between 1 and {MAX_SHARDS}")
    if index >= count:
        raise ValueError(f"{spec!r}: shards are numbered 0 to {count - 1}")
    return Shard(index, count)


def check(spec: str) -> None:
    """Validate a [fleet] shard / --shard value without resolving "auto" (that needs the host's env)."""
    if spec not in ("", "auto"):
        parse(spec)


def resolve(spec: str, env: Mapping[str, str], hostname: str | None = None) -> Shard | None:
    """The shard this process runs: None for "" (all cameras), "I/N" as given, "auto" from the environment
    ($STREAMD_SHARDS, and $STREAMD_SHARD_INDEX or the host name's ordinal); ValueError naming what is missing."""
    if not spec:
        return None
    if spec != "auto":
        return parse(spec)
    count = env.get("STREAMD_SHARDS", "")
    if not count:
        raise ValueError('"auto" needs $STREAMD_SHARDS, the number of shards (a StatefulSet\'s replicas)')
    index = env.get("STREAMD_SHARD_INDEX", "")
    if not index:
        name = hostname if hostname is not None else socket.gethostname()
        ordinal = _ORDINAL.search(name)
        if not ordinal:
            raise ValueError(f'"auto" needs $STREAMD_SHARD_INDEX, or a host name ending in -ORDINAL as a '
                             f"StatefulSet's pods have (this host is {name!r})")
        index = ordinal[1]
    return parse(f"{index}/{count}")


def weight(shard: int, name: str) -> int:
    """The rendezvous weight of a camera for a shard: 64 bits of BLAKE2b over both."""
    digest = hashlib.blake2b(f"{shard}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(name: str, count: int) -> int:
    """The shard (0 .. count - 1) that runs the camera `name`."""
    return max(range(count), key=lambda shard: weight(shard, name))


def mine(cameras: Iterable[Named], shard: Shard | None) -> tuple[Named, ...]:
    """The cameras (anything with a .name) that `shard` runs, in their order; all of them for None."""
    return tuple(c for c in cameras if shard is None or owner(c.name, shard.count) == shard.index)
