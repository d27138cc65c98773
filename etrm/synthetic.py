"""Deterministic synthetic batches in the dataset format, for tests and benchmarks
that need the shapes of real data but not its content."""

from __future__ import annotations

import torch

from etrm.config import ModelConfig


def random_batch(
    config: ModelConfig,
    batch_size: int = 2,
    *,
    seed: int = 0,
    demo_counts: list[int] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """A batch of random grids-as-tokens. Encoder models also get `config.max_demos`
    demo slots, of which the first `demo_counts[i]` are valid for sample i (default: all)."""
    gen = torch.Generator().manual_seed(seed)
    s = config.seq_len
    batch = {
        "inputs": torch.randint(2, config.vocab_size, (batch_size, s), generator=gen, dtype=torch.int32),
        "labels": torch.randint(2, config.vocab_size, (batch_size, s), generator=gen).long(),
        "puzzle_identifiers": torch.randint(
            1, config.num_puzzle_identifiers, (batch_size,), generator=gen, dtype=torch.int32
        ),
    }
    if config.uses_encoder:
        d = config.max_demos
        counts = demo_counts if demo_counts is not None else [d] * batch_size
        if len(counts) != batch_size or any(not 0 <= c <= d for c in counts):
            raise ValueError(f"demo_counts {counts} must give 0..{d} valid demos for each of {batch_size} samples")
        batch["demo_inputs"] = torch.randint(2, config.vocab_size, (batch_size, d, s), generator=gen, dtype=torch.int32)
        batch["demo_labels"] = torch.randint(2, config.vocab_size, (batch_size, d, s), generator=gen, dtype=torch.int32)
        batch["demo_mask"] = torch.arange(d).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)
    return {k: v.to(device) for k, v in batch.items()}
