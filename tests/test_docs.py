"""The documentation builds and its commands are real: `mkdocs build --strict` on docs/ (a broken
link, a missing anchor or a page left out of the nav fails it), relative links of the README that
resolve, and every `etrm ...` command a `bash` block of the pages or the README shows parses under
etrm's own argparse parsers (parsed only, never run). Each rule has a control: a copy with the
fault, written to a temporary folder, that must fail."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from etrm import cli

ROOT = Path(__file__).resolve().parent.parent
MKDOCS_YML = ROOT / "mkdocs.yml"
DOCS = ROOT / "docs"
README = ROOT / "README.md"
FENCE = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
SEPARATORS = {"&&", "||", ";", "|"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")


def mkdocs_build(config_file: Path, site_dir: Path) -> list[str]:
    """The strict build's warnings and errors (none: it built). In-process: the mkdocs command
    would pay a second interpreter and its imports."""
    pytest.importorskip("mkdocs", reason="mkdocs is in the test and docs extras: pip install -e '.[docs]'")
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")  # material's end-of-life banner
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("mkdocs")
    logger.addHandler(handler)
    try:
        build(load_config(config_file=str(config_file), strict=True, site_dir=str(site_dir)))
    except Abort as abort:
        messages.append(str(abort))
    finally:
        logger.removeHandler(handler)
    return messages


def docs_copy(tmp_path: Path) -> Path:
    """mkdocs.yml and docs/ copied into tmp_path; returns the copy's mkdocs.yml."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(MKDOCS_YML, tmp_path / "mkdocs.yml")
    return tmp_path / "mkdocs.yml"


def test_the_docs_build_strictly(tmp_path):
    assert mkdocs_build(MKDOCS_YML, tmp_path / "site") == []


def test_control_a_broken_link_a_broken_anchor_and_a_page_missing_from_the_nav_fail_the_strict_build(tmp_path):
    """One copy with the three faults (one build, not three): each is named among the warnings."""
    config = docs_copy(tmp_path)
    with (tmp_path / "docs" / "commands.md").open("a") as page:
        page.write("\nSee [the missing page](no-such-page.md) and [a section](hypotheses.md#no-such-section).\n")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n\nIn no nav.\n")
    messages = mkdocs_build(config, tmp_path / "site")
    assert any("Aborted" in m for m in messages), messages
    for fault in ("no-such-page.md", "no-such-section", "orphan.md"):
        assert any(fault in m for m in messages), (fault, messages)


def readme_link_errors(readme: Path) -> list[str]:
    """Relative links of the README (it is not part of the site) whose file does not exist."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme.read_text())
    return [link for link in links if "://" not in link and not (readme.parent / link).exists()]


def test_the_readme_links_resolve_and_a_broken_one_is_caught(tmp_path):
    assert readme_link_errors(README) == []
    broken = tmp_path / "README.md"
    broken.write_text(README.read_text() + "\n[gone](docs/no-such-page.md)\n")
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "CHANGELOG.md", tmp_path)
    assert readme_link_errors(broken) == ["docs/no-such-page.md"]


def shown_commands(text: str) -> list[list[str]]:
    """The `etrm` argument lists of every command in the text's ```bash blocks: line continuations
    joined, comments dropped, `&&`/`;`/`|` chains split, `VAR=value` prefixes dropped, and
    `python -m etrm` / `torchrun ... -m etrm` read as `etrm`. Optional parts shown as `[--flag X]`
    are parsed too, placeholders in capitals stand for a value, and a `...` standing for omitted
    arguments is dropped."""
    commands = []
    for block in FENCE.findall(text):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            segment: list[str] = []
            for token in [*lexer, ";"]:
                if token not in SEPARATORS:
                    segment.append(token)
                    continue
                while segment and ENV_ASSIGNMENT.match(segment[0]):
                    segment.pop(0)
                argv = _etrm_arguments(segment)
                if argv is not None:
                    commands.append([_sample(a.strip("[]")) for a in argv if a.strip("[]") and a != "..."])
                segment = []
    return commands


def _sample(word: str) -> str:
    """A placeholder in capitals (PATH, DIR, K, N, NAME) stands for a value: "1" is one for every
    flag that takes a path, a name or a count."""
    return "1" if PLACEHOLDER.match(word) else word


def _etrm_arguments(words: list[str]) -> list[str] | None:
    if words[:1] == ["etrm"]:
        return words[1:]
    for i in range(len(words) - 1):  # python -m etrm ..., torchrun --nproc-per-node 8 -m etrm ...
        if words[i] == "-m" and words[i + 1] in ("etrm", "etrm.cli") and words[0] in ("python", "python3", "torchrun"):
            return words[i + 2 :]
    return None


def command_errors(files: list[Path], capsys) -> list[str]:
    """Each shown command that etrm's parser refuses, with argparse's message."""
    errors = []
    for path in files:
        for argv in shown_commands(path.read_text()):
            try:
                cli.build_parser(argv).parse_args(argv)
            except SystemExit:
                message = capsys.readouterr().err.strip().splitlines()[-1:]
                errors.append(f"{path.name}: etrm {shlex.join(argv)}: {message}")
    return errors


def documented_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_the_commands_the_docs_show_parse(capsys):
    assert command_errors(documented_files(), capsys) == []


def test_the_shown_commands_are_found_in_their_forms():
    """The extraction finds what the pages show, so the parse test cannot pass by finding nothing."""
    found = [argv for path in documented_files() for argv in shown_commands(path.read_text())]
    subcommands = {argv[0] for argv in found if argv}
    assert {"investigate", "experiment1", "bench"} <= subcommands, subcommands
    readme = shown_commands(README.read_text())
    assert any(argv[:1] == ["investigate"] and "--report" in argv for argv in readme)  # after && chains
    assert any("--model-code" in argv and "-k" in argv for argv in readme)  # after an env prefix
    experiment = shown_commands((DOCS / "experiment1.md").read_text())
    assert any("--resume" in argv and "--device" in argv for argv in experiment)  # torchrun -m etrm
    assert any("--wandb-project" in argv for argv in experiment)  # [--optional] parts and continuations


def test_control_a_wrong_flag_in_a_shown_command_fails(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nOMP_NUM_THREADS=1 etrm investigate \\\n    --trm-checkpoint PATH --no-such-flag 3  # typo\n```\n"
    )
    errors = command_errors([page], capsys)
    assert len(errors) == 1 and "--no-such-flag" in errors[0], errors
