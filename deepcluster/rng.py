"""Explicit random generators seeded from (run seed, epoch, stage).

Every random draw of a run comes from one of these, so an epoch re-run after a crash makes
exactly the same draws as the first attempt. The global RNG is never re-seeded.
"""

from __future__ import annotations

import hashlib

import torch

INIT_EPOCH = -1  # the "epoch" of the initial weights, drawn before epoch 0


def stage_seed(run_seed: int, epoch: int, stage: str) -> int:
    """A 63-bit seed derived from (run seed, epoch, stage) by sha256: independent streams per stage."""
    digest = hashlib.sha256(f"{run_seed}:{epoch}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def stage_generator(run_seed: int, epoch: int, stage: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded with `stage_seed(run_seed, epoch, stage)`."""
    return torch.Generator(device=device).manual_seed(stage_seed(run_seed, epoch, stage))
