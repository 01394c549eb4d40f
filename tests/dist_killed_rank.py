"""``lora-ens-rs train`` whose rank 1 is killed (SIGKILL) after its first committed checkpoint.

Run under torchrun by ``tests/test_distributed_train.py``:
``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_killed_rank.py
DATA --out OUT ...`` (``train``'s arguments). The process dies as an out-of-memory kill would:
no exception, no cleanup, so the run must notice the lost rank by itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from lora_ens_rs.train import loop
from lora_ens_rs.train.cli import main

_checkpoint = loop._Trainer.checkpoint


def checkpoint_then_die(self: loop._Trainer) -> None:
    _checkpoint(self)
    directory = self.config.checkpoint_path()
    if self.shard.rank != 1 or directory is None:
        return
    state = Path(directory, "state.pt")
    deadline = time.monotonic() + 60
    while not state.is_file() and time.monotonic() < deadline:  # rank 0 commits it
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


loop._Trainer.checkpoint = checkpoint_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
