"""Training across processes: the members sharded over torchrun's ranks (torch.distributed).

    torchrun --nproc_per_node 4 -m lora_ens_rs train data.jsonl --out runs/arc --members 8

Under torchrun (``WORLD_SIZE`` > 1 in the environment) each rank trains a contiguous block of
members (:func:`shard_members`: 8 members on 4 ranks are m0-m1, m2-m3, ...), batched as a
single process trains all of them; a member's seed, initialisation, data order and dropout
stream depend on the member alone, so its adapters do not depend on the world size. The ranks
meet only to share per-epoch metrics (:meth:`Shard.gather`), to commit checkpoints and to
finish the export (:meth:`Shard.barrier`). Without torchrun, or with one process, the shard is
every member and no process group is created. The backend is gloo (the trainer runs on CPU).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lora_ens_rs.errors import InputError, LoraEnsError

T = TypeVar("T")


class DistributedError(LoraEnsError, RuntimeError):
    """A training process lost its peers: another rank stopped, or a collective timed out.

    Defined here, not in :mod:`lora_ens_rs.errors`, whose classes are the engine's.
    """


#: How long a rank waits for the others at a collective (seconds) unless
#: ``LORA_ENS_RS_DIST_TIMEOUT`` says otherwise. Ranks run the same number of steps, so waits
#: are short; the limit only turns a hung peer into an error. A peer that dies is reported at
#: once by torchrun, which stops the other ranks.
DEFAULT_TIMEOUT_S = 1800.0


def shard_members(n_members: int, world_size: int, rank: int) -> list[int]:
    """The members rank ``rank`` trains: a contiguous block, the first ranks one larger.

    Example:
        >>> [shard_members(5, 2, r) for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    base, extra = divmod(n_members, world_size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (rank < extra)))


@dataclass
class Shard:
    """This process's place in the run: its rank and the members it trains.

    Attributes:
        rank: the global rank (0 without torchrun).
        world_size: the number of processes.
        local_rank: the rank on this node.
        n_members: M, the whole ensemble.
        members: the global indices of this rank's members, ascending.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    n_members: int = 1
    members: list[int] = field(default_factory=list)

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: prints progress, commits checkpoints and writes ``ensemble.json``."""
        return self.rank == 0

    def _collective(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as e:  # gloo's errors are RuntimeErrors of several kinds
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed (another rank stopped, "
                f"or timed out after {timeout_s():.0f} s): {e}"
            ) from e

    def gather(self, value: T, what: str = "gathering results") -> list[T]:
        """Every rank's ``value``, in rank order (``[value]`` in one process)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        self._collective(what, dist.all_gather_object, out, value)
        return out

    def broadcast(self, value: T, what: str = "sharing a value") -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        self._collective(what, dist.broadcast_object_list, box, 0)
        return box[0]

    def barrier(self, what: str) -> None:
        """Wait until every rank reaches this point (``what`` names it in errors)."""
        if self.distributed:
            import torch.distributed as dist

            self._collective(what, dist.barrier)


def timeout_s() -> float:
    """The collective timeout: ``LORA_ENS_RS_DIST_TIMEOUT`` seconds, else the default."""
    text = os.environ.get("LORA_ENS_RS_DIST_TIMEOUT")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise InputError(f"LORA_ENS_RS_DIST_TIMEOUT must be seconds, got {text!r}") from None
    if value <= 0:
        raise InputError(f"LORA_ENS_RS_DIST_TIMEOUT must be > 0, got {text!r}")
    return value


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"environment variable {name} must be an integer, got {text!r}") from None


@contextmanager
def shard_from_env(n_members: int) -> Iterator[Shard]:
    """This process's shard, from the variables torchrun sets (``WORLD_SIZE``, ``RANK``, ...).

    With ``WORLD_SIZE`` > 1 it joins the process group (gloo, ``env://`` rendezvous: torchrun's
    ``MASTER_ADDR`` / ``MASTER_PORT``) for the duration of the block and leaves it after.

    Raises:
        InputError: more ranks than members, or malformed variables.
        DistributedError: the process group cannot be joined.
    """
    world_size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"RANK {rank} is not in 0..{world_size - 1} (WORLD_SIZE {world_size})")
    if world_size > n_members:
        raise InputError(
            f"{world_size} processes for {n_members} members: each rank needs a member; "
            f"run at most {n_members} processes (--nproc_per_node x --nnodes)"
        )
    shard = Shard(
        rank, world_size, local_rank, n_members, shard_members(n_members, world_size, rank)
    )
    if not shard.distributed:
        yield shard
        return
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s())
    try:
        dist.init_process_group("gloo", timeout=timeout)
    except Exception as e:
        raise DistributedError(f"rank {rank}: cannot join the process group: {e}") from e
    try:
        yield shard
    finally:
        dist.destroy_process_group()
