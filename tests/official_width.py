"""Official-width artifacts for timing `etrm investigate` where its users are: a TRM and a
frozen-decoder ETRM at the official ARC-AGI-1 size (hidden 512, 8 heads, seq 900 + 16
puzzle tokens, H_cycles 3, L_cycles 4, bfloat16), written in the official/origin trainers'
layout (`_orig_mod.model.*` state dict in `step_N`, `all_config.yaml` beside it), and the
origin few-shot build of real ARC-AGI-1 tasks from the interop corpus.

The configs are the corpus's own `all_config.yaml` files at the official width; the weights
are seeded random draws (not seed 0, so they differ from a freshly built model, and with
non-zero puzzle embeddings, so no check passes for want of a signal).

    python tests/official_width.py OUT    # prints the `etrm investigate` command line
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import yaml

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "interop"
WIDTH = {"hidden_size": 512, "num_heads": 8, "H_cycles": 3, "L_cycles": 4, "forward_dtype": "bfloat16"}


def _write_run(folder: Path, config: dict, head: torch.nn.Module, step: int) -> Path:
    """`step_N` with the key layout of `torch.compile(loss_head).state_dict()`, and its config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "all_config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    path = folder / f"step_{step}"
    torch.save({f"_orig_mod.{k}": v.detach().clone() for k, v in head.state_dict().items()}, path)
    return path


def _official_width_config(corpus_run: str, **changes) -> dict:
    config = yaml.safe_load((CORPUS / corpus_run / "all_config.yaml").read_text())
    config["arch"].update(WIDTH)
    if config["arch"].get("puzzle_emb_ndim"):
        config["arch"]["puzzle_emb_ndim"] = WIDTH["hidden_size"]
    config.update(changes)
    return config


def write_official_width(out: str | Path, seed: int = 7, etrm_l_cycles: int = WIDTH["L_cycles"]) -> dict[str, Path]:
    """Write the TRM, the ETRM and the data under `out`; returns the three paths. `etrm_l_cycles`
    6 gives the ETRM the origin's composed L_cycles (half again the TRM's recursion, what the
    origin runs hold; H4 then rightly reports the mismatch)."""
    from etrm.checkpoints.native import load_model

    out = Path(out)
    data = out / "fewshot"
    shutil.copytree(CORPUS / "origin" / "fewshot", data, dirs_exist_ok=True)

    torch.manual_seed(seed)
    trm_config = _official_width_config("official/trm-bf16", data_paths=[str(data)], checkpoint_path=str(out / "trm"))
    trm_dir = out / "trm"
    trm_dir.mkdir(parents=True, exist_ok=True)
    (trm_dir / "all_config.yaml").write_text(yaml.safe_dump(trm_config, sort_keys=True))
    # Build through the importer, as a user's checkpoint is read, then draw the weights.
    from etrm.config.importer import import_training_config
    from etrm.models import build_model

    cfg = import_training_config(trm_dir / "all_config.yaml").model_config.replace(num_puzzle_identifiers=181)
    trm = build_model(cfg)
    with torch.no_grad():  # the puzzle embedding table is a buffer, not a parameter, and starts at zero
        for name, p in trm.state_dict(keep_vars=True).items():
            # Unit-RMS prefix tokens: the context's scale, so H3's scale check has a clean reference.
            p.add_(torch.randn_like(p) * (1.0 if "puzzle_emb" in name else 1e-3))
    trm_path = _write_run(trm_dir, trm_config, trm, step=100)

    etrm_config = _official_width_config(
        "origin/etrm-standard",
        data_paths=[str(data)],
        checkpoint_path=str(out / "etrm"),
        load_pretrained_decoder=str(trm_path),
    )
    etrm_config["arch"]["halt_exploration_prob"] = trm_config["arch"]["halt_exploration_prob"]
    etrm_config["arch"]["L_cycles"] = etrm_l_cycles
    etrm_dir = out / "etrm"
    etrm_dir.mkdir(parents=True, exist_ok=True)
    (etrm_dir / "all_config.yaml").write_text(yaml.safe_dump(etrm_config, sort_keys=True))
    etrm = build_model(import_training_config(etrm_dir / "all_config.yaml").model_config)
    with torch.no_grad():
        decoder = {k: v for k, v in trm.state_dict().items() if ".inner." in k and "puzzle_emb" not in k}
        etrm.load_state_dict(decoder, strict=False)  # the frozen run's decoder is the TRM's, bit for bit
        for name, p in etrm.named_parameters():
            if ".encoder." in name:
                p.add_(torch.randn_like(p) * 1e-3)
    etrm_path = _write_run(etrm_dir, etrm_config, etrm, step=50)
    load_model(trm_path), load_model(etrm_path)  # both must read back as users' checkpoints do
    return {"trm_checkpoint": trm_path, "etrm_checkpoint": etrm_path, "data": data}


def investigate_args(paths: dict[str, Path]) -> list[str]:
    return [
        "--trm-checkpoint",
        str(paths["trm_checkpoint"]),
        "--etrm-checkpoint",
        str(paths["etrm_checkpoint"]),
        "--data",
        str(paths["data"]),
    ]


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python tests/official_width.py OUT [ETRM_L_CYCLES]")
    l_cycles = int(sys.argv[2]) if len(sys.argv) == 3 else WIDTH["L_cycles"]
    print("etrm investigate " + " ".join(investigate_args(write_official_width(sys.argv[1], etrm_l_cycles=l_cycles))))
