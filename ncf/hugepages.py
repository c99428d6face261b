"""Large tables that are read a random row at a time, in memory advised to use transparent huge pages.

A random row gather over a table of GBs misses the TLB on nearly every row with 4 KB pages; with 2 MB pages
(Linux THP in "madvise" mode, the common default) most of those misses go. Used for the scorer's per-item rows
(`ncf.scoring.ItemScorer.item_rows`) and the CPU training step's embedding block (`ncf.cpu_step`).
"""

from __future__ import annotations

import math
import mmap

import torch


def zeros(*shape: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A float32 tensor of zeros; on CPU in anonymous memory advised MADV_HUGEPAGE (zero-filled by the kernel),
    elsewhere (or without madvise) a plain `torch.zeros`."""
    numel = math.prod(shape)
    if torch.device(device).type != "cpu" or not hasattr(mmap, "MADV_HUGEPAGE") or numel == 0:
        return torch.zeros(*shape, device=device)
    memory = mmap.mmap(-1, numel * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(memory, dtype=torch.float32).view(*shape)  # the tensor keeps `memory` alive
