"""Which artifacts the checks run on: the user's (investigation mode) or the bundled fixtures.

Every artifact has a pytest option that points at a user's file; without it the
bundled fixture of the same kind is used. Bundled fixtures live in the repository's
top-level `fixtures/` folder, installed as the package `etrm.fixtures`, at these
paths (the fixture generators must write exactly these):

- trm_checkpoint: `checkpoints/trm/step_final`, a tiny TRM trained on ARC fixture
  tasks in the official layout (state dict of the compiled ACTLossHead, named like the
  official trainer's `step_<N>`), with its `all_config.yaml` beside it;
- etrm_checkpoint: `checkpoints/etrm_unfrozen/step_final`, an ETRM trained from that
  TRM with the decoder unfrozen (`all_config.yaml` beside it);
- etrm_frozen_checkpoint: `checkpoints/etrm_frozen/step_final`, the same with the
  decoder frozen;
- data_dir: `data/fewshot/`, a few-shot build (official layout plus
  `<set>__num_demos.npy`);
- trm_data_dir: `data/trm/`, the TRM build of the same tasks;
- metrics_log: `metrics/experiment1.jsonl`, the metrics of the frozen-decoder run;
- model_config: none bundled (a ModelConfig file given by the user).

`etrm_frozen_checkpoint` and `trm_data_dir` have no option: they exist to pair with
the other bundled artifacts. A bundled path that does not exist (yet) resolves to
None, and a check that needs it is skipped with a reason naming the option that
would enable it. User paths must exist: a typo is an error, not a skip.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pytest

from etrm.bundled import fixtures_root

BUNDLED: dict[str, str] = {
    "trm_checkpoint": "checkpoints/trm/step_final",
    "etrm_checkpoint": "checkpoints/etrm_unfrozen/step_final",
    "etrm_frozen_checkpoint": "checkpoints/etrm_frozen/step_final",
    "data_dir": "data/fewshot",
    "trm_data_dir": "data/trm",
    "metrics_log": "metrics/experiment1.jsonl",
}

# field -> (pytest option, metavar, is a directory, what it is). None: no option, bundled only.
OPTIONS: dict[str, tuple[str | None, str, bool, str]] = {
    "trm_checkpoint": ("--trm-checkpoint", "PATH", False, "TRM checkpoint"),
    "etrm_checkpoint": ("--etrm-checkpoint", "PATH", False, "ETRM checkpoint"),
    "etrm_frozen_checkpoint": (None, "", False, "frozen-decoder ETRM checkpoint"),
    "data_dir": ("--data", "DIR", True, "built dataset"),
    "trm_data_dir": (None, "", True, "TRM dataset build"),
    "metrics_log": ("--metrics-log", "PATH", False, "metrics log"),
    "model_config": ("--model-config", "PATH", False, "model config"),
}

USER, BUNDLED_SOURCE, ABSENT = "user", "bundled", "absent"
DEVICES = ("cpu", "cuda")


class ArtifactError(ValueError):
    """A user-given artifact path is unusable; the message names the option and path."""


@dataclass(frozen=True)
class Artifacts:
    """Resolved artifact paths (None when neither given nor bundled) and where each came from."""

    trm_checkpoint: Path | None = None
    etrm_checkpoint: Path | None = None
    etrm_frozen_checkpoint: Path | None = None
    data_dir: Path | None = None
    trm_data_dir: Path | None = None
    metrics_log: Path | None = None
    model_config: Path | None = None
    device: str = "cpu"
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, given: Mapping[str, str | Path | None], device: str = "cpu",
                root: Path | None = None) -> "Artifacts":
        """`given` maps field names to user paths (None: not given); the rest come from `root`
        (default: the installed fixtures)."""
        unknown = sorted(set(given) - set(OPTIONS))
        if unknown:
            raise ArtifactError(f"unknown artifact(s) {unknown}; known: {sorted(OPTIONS)}")
        if device not in DEVICES:
            raise ArtifactError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
        root = fixtures_root() if root is None else Path(root)
        paths: dict[str, Path | None] = {}
        sources: dict[str, str] = {}
        for name, (option, _, is_dir, what) in OPTIONS.items():
            user = given.get(name)
            if user is not None:
                if option is None:
                    raise ArtifactError(f"{name} is bundled only and cannot be given")
                path = Path(user).expanduser().resolve()
                if not (path.is_dir() if is_dir else path.is_file()):
                    kind = "directory" if is_dir else "file"
                    raise ArtifactError(f"{option} {user}: {what} {kind} not found")
                paths[name], sources[name] = path, USER
                continue
            bundled = root / BUNDLED[name] if name in BUNDLED else None
            if bundled is not None and (bundled.is_dir() if is_dir else bundled.is_file()):
                paths[name], sources[name] = bundled, BUNDLED_SOURCE
            else:
                paths[name], sources[name] = None, ABSENT
        return cls(**paths, device=device, sources=sources)

    def source(self, name: str) -> str:
        """"user", "bundled" or "absent"."""
        if name not in OPTIONS:
            raise KeyError(f"unknown artifact {name!r}; known: {sorted(OPTIONS)}")
        return self.sources.get(name, USER if getattr(self, name) is not None else ABSENT)

    def require(self, name: str) -> Path:
        """The artifact's path, or skip the calling test saying which option would enable it."""
        if name not in OPTIONS:
            raise KeyError(f"unknown artifact {name!r}; known: {sorted(OPTIONS)}")
        path = getattr(self, name)
        if path is None:
            pytest.skip(_missing_reason(name))
        return path

    def require_matching(self, *names: str) -> tuple[Path, ...]:
        """Paths of artifacts that must belong together (an ETRM checkpoint and the TRM it was
        trained from): all from the user or all bundled, else skip, saying what to pass."""
        paths = tuple(self.require(name) for name in names)
        user = [n for n in names if self.source(n) == USER]
        bundled = [n for n in names if self.source(n) == BUNDLED_SOURCE]
        if user and bundled:
            wanted = [OPTIONS[n][0] for n in bundled]
            given = ", ".join(OPTIONS[n][0] for n in user)
            if all(wanted):
                fix = "pass " + " and ".join(f"{o} {OPTIONS[n][1]}" for o, n in zip(wanted, bundled)) + " too"
            else:
                fix = "this check runs on the bundled fixtures only"
            pytest.skip(f"{', '.join(names)} must belong together, but {given} is yours and "
                        f"{', '.join(bundled)} is bundled: {fix}")
        return paths


def _missing_reason(name: str) -> str:
    option, metavar, _, what = OPTIONS[name]
    if option is None:
        return (f"no bundled {what}: fixtures/{BUNDLED[name]} is missing "
                "(run the fixture generators to create it)")
    return f"no {what}: pass {option} {metavar}"
