"""The process group of a distributed job, and the collectives the job uses, on tensors only.

A job launched by torchrun finds its rank, world size and rendezvous in the environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``). `Group.join` joins the default
process group with the backend that suits the device (NCCL for CUDA, gloo for the CPU) and, on
CUDA, a second gloo group for the control plane: the small status exchanges that decide what every
rank does next, and the snapshot shards gathered to rank 0, which live in host memory.

Every collective here moves tensors. torch's object collectives (``broadcast_object_list``,
``gather_object``, ...) pickle, and nothing that came from outside the process may be unpickled;
bytes travel as uint8 tensors instead. Every collective waits at most ``timeout`` (a rank that died
or hangs fails the others, and torchrun restarts the group).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


class Group:
    """This process's place in the job and the collectives it takes part in."""

    def __init__(self, device: torch.device, control: dist.ProcessGroup | None) -> None:
        self.device = device
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self._control = control  # None: the default group (gloo) serves both planes

    @staticmethod
    def join(device_name: str, timeout_s: float) -> Group:
        """Join the job's default process group (from torchrun's environment) on the device named."""
        device = torch.device(device_name)
        timeout = timedelta(seconds=timeout_s)
        backend = backend_for(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timeout)
        control = None
        if backend != "gloo":  # every rank is a member: new_group returns the group itself
            made = dist.new_group(backend="gloo", timeout=timeout)
            assert isinstance(made, dist.ProcessGroup)
            control = made
        group = Group(device, control)
        log.info(
            "rank %d of %d (pid %d), backend %s on %s", group.rank, group.world, os.getpid(), backend, device
        )
        return group

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- control plane: host memory ---------------------------------------------------------
    def gather_ints(self, values: Sequence[int]) -> np.ndarray:
        """Every rank's ``values`` (the same length on every rank): an int64 array (world, len)."""
        mine = torch.tensor(list(values), dtype=torch.int64)
        out = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(out, mine, group=self._control)
        return torch.stack(out).numpy()

    def gather_all(self, values: np.ndarray) -> list[np.ndarray]:
        """Every rank's 1-d int64 ``values`` (of any length) on every rank, in rank order."""
        sizes = self.gather_ints([len(values)])[:, 0]
        mine = torch.zeros(int(sizes.max()), dtype=torch.int64)
        mine[: len(values)] = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
        out = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(out, mine, group=self._control)
        return [part[: int(n)].numpy() for part, n in zip(out, sizes, strict=True)]

    def gather_bytes(self, data: bytes) -> list[bytes] | None:
        """Every rank's ``data`` on rank 0 (in rank order); None on the others."""
        sizes = self.gather_ints([len(data)])[:, 0]
        longest = int(sizes.max())
        mine = torch.zeros(longest, dtype=torch.uint8)
        if data:
            mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if self.rank != 0:
            dist.gather(mine, None, dst=0, group=self._control)
            return None
        parts = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.world)]
        dist.gather(mine, parts, dst=0, group=self._control)
        return [p[: int(n)].numpy().tobytes() for p, n in zip(parts, sizes, strict=True)]

    # -- data plane: tensors on the training device ------------------------------------------
    def exchange(self, send: torch.Tensor, counts: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        """All-to-all by the first dimension: rows ``send[sum(counts[:r]):][:counts[r]]`` go to rank
        r. Returns the rows received (in rank order) and how many came from each rank."""
        sent = torch.tensor(list(counts), dtype=torch.int64, device=self.device)
        got = torch.empty_like(sent)
        dist.all_to_all_single(got, sent)
        received = [int(n) for n in got.tolist()]
        return self.reply(send, list(counts), received), received

    def reply(self, send: torch.Tensor, counts: list[int], expect: list[int]) -> torch.Tensor:
        """All-to-all whose sizes both sides know: ``counts[r]`` rows go to rank r and ``expect[r]``
        come back from it (the answer to an `exchange`, with the counts swapped)."""
        out = send.new_empty((sum(expect), *send.shape[1:]))
        dist.all_to_all_single(out, send.contiguous(), expect, counts)
        return out

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's ``tensor`` on every rank, in place."""
        dist.broadcast(tensor, src=0)
