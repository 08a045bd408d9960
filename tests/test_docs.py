"""The docs cannot drift: every flag of a documented command line exists in its entry point's parser, and every
repository path that README.md and docs/*.md name exists."""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Launchers whose extra flags go to an entry point: the recipes' scripts pass them on to train.py or eval.py.
LAUNCHERS = {"scripts/train.sh": "train.py", "scripts/pointflow/train_": "train.py",
             "scripts/pointflow/test/": "eval.py"}
ENTRY_POINT = re.compile(r"(?<![\w/.-])((?:scripts/[\w/.-]+\.sh)|(?:tools/\w+\.py)|train\.py|eval\.py|predict\.py)\b")
# A command ends at a pipe, a list operator or a shell comment.
COMMAND_END = re.compile(r"\s(?:\||&&|;|#)\s|\s#\s?|$")
FLAG = re.compile(r"^(--?[a-z][\w-]*)")  # upper case (--FLAG) is a placeholder
# Placeholders and globs written in prose, not paths: {split}, <name>, DIR, ...
PLACEHOLDER = re.compile(r"[{}<>\[\]]|\.\.\.|…")


class _Captured(Exception):
    """Carries the parser a tool's ``main`` built (see :func:`parser_of`)."""


def parser_of(entry_point: str) -> argparse.ArgumentParser:
    """The parser of ``entry_point`` (``train.py``, ``tools/export_onnx.py``): its ``build_parser()``, or, for a tool
    that builds its parser inside ``main``, the parser ``main`` was about to use."""
    module = importlib.import_module(entry_point.removesuffix(".py").replace("/", "."))
    if hasattr(module, "build_parser"):
        return module.build_parser()

    def capture(parser, *args, **kwargs):
        raise _Captured(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            module.main([])
        except _Captured as captured:
            return captured.args[0]
    raise AssertionError(f"{entry_point}: main() did not parse its arguments")


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of ``parser`` and of its sub-commands (``--lr``, ``-im``)."""
    options = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_parser in action.choices.values():
                options |= option_strings(sub_parser)
    return options


def code_text(markdown: str) -> list[str]:
    """The command-like text of a Markdown page: each line of its fenced and indented code blocks (continuation
    lines joined) and each inline code span."""
    pieces = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", markdown, re.S):
        pieces += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S).replace("\\\n", " ")
    pieces += re.findall(r"^ {4}(\S.*)$", prose, re.M)
    prose = re.sub(r"^ {4}\S.*$", "", prose, flags=re.M)
    pieces += re.findall(r"`([^`\n]+)`", prose.replace("\n", " "))
    return pieces


def documented_commands(markdown: str) -> list[tuple[str, list[str]]]:
    """``(entry point, flags)`` of each command line in ``markdown`` that names train.py, eval.py, predict.py,
    tools/*.py or a launcher of one (flags without their ``=value``)."""
    commands = []
    for text in code_text(markdown):
        for match in ENTRY_POINT.finditer(text):
            name = match.group(1)
            entry_point = next((target for prefix, target in LAUNCHERS.items() if name.startswith(prefix)), name)
            if not is_entry_point(entry_point):
                continue  # another script (the ablation's) or a library module of tools/
            rest = text[match.end():]
            rest = rest[:COMMAND_END.search(rest).start()]
            try:
                words = shlex.split(rest)
            except ValueError:
                words = rest.split()
            flags = [FLAG.match(word).group(1) for word in words if FLAG.match(word)]
            commands.append((entry_point, flags))
    return commands


def is_entry_point(name: str) -> bool:
    """Whether the repository file ``name`` is a Python script run from the command line."""
    path = REPO / name
    return path.suffix == ".py" and path.is_file() and 'if __name__ == "__main__":' in path.read_text()


def named_paths(markdown: str, page: Path, top_level: set[str]) -> list[tuple[str, list[Path]]]:
    """``(as written, candidates)`` for each repository path the page names: Markdown link targets (relative to the
    page) and words whose first part is a top-level entry of the repository (relative to the root)."""
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", markdown):
        target = target.split("#", 1)[0]
        if target and "://" not in target and not target.startswith("mailto:"):
            found.append((target, [page.parent / target]))
    for word in re.findall(r"(?<![\w./~-])((?:[\w.-]+/)+[\w.*-]*)", markdown):
        word = word.rstrip(".")
        if word.split("/", 1)[0] in top_level and not PLACEHOLDER.search(word):
            found.append((word, [REPO / word]))
    return found


def tracked_top_level() -> set[str]:
    """The top-level files and folders that git tracks (``docs``, ``train.py``, ...)."""
    listing = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {line.split("/", 1)[0] for line in listing.splitlines() if "/" in line}


def test_every_documented_flag_exists_in_its_entry_point():
    parsers: dict[str, set[str]] = {}
    unknown = []
    for page in DOCS:
        for entry_point, flags in documented_commands(page.read_text(encoding="utf-8")):
            if entry_point not in parsers:
                parsers[entry_point] = option_strings(parser_of(entry_point))
            unknown += [f"{page.relative_to(REPO)}: {entry_point} {flag}" for flag in flags
                        if flag not in parsers[entry_point]]
    assert {"train.py", "eval.py", "predict.py"} <= set(parsers)  # the pages were read
    assert unknown == []


def test_every_named_repository_path_exists():
    top_level = tracked_top_level()
    missing = []
    for page in DOCS:
        for written, candidates in named_paths(page.read_text(encoding="utf-8"), page, top_level):
            if not any(candidate.exists() or list(REPO.glob(str(candidate.relative_to(REPO))))
                       for candidate in candidates if candidate.resolve().is_relative_to(REPO)):
                missing.append(f"{page.relative_to(REPO)}: {written}")
    assert missing == []


@pytest.mark.parametrize(("markdown", "expected"), [
    ("```bash\npython train.py --lr 0.01 \\\n    --max_epoch=3  # a comment --not_a_flag\n```",
     [("train.py", ["--lr", "--max_epoch"])]),
    ("Run `python eval.py -im whole --no_flip | tee log` or `bash scripts/train.sh x.yaml 2 --amp bf16`.",
     [("eval.py", ["-im", "--no_flip"]), ("train.py", ["--amp"])]),
    ("`make test` and `python -m bench --smoke` name no entry point.", []),
    ("Indented:\n\n    python predict.py a.tif --out_dir o \\\n        --window 512\n",
     [("predict.py", ["--out_dir", "--window"])]),
])
def test_commands_are_read_with_their_flags(markdown, expected):
    assert documented_commands(markdown) == expected


def test_a_drifted_flag_or_path_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("`python predict.py tile.tif --no_such_flag` and docs/no_such_page.md")
    commands = documented_commands(page.read_text())
    assert commands == [("predict.py", ["--no_such_flag"])]
    assert "--no_such_flag" not in option_strings(parser_of("predict.py"))
    assert named_paths(page.read_text(), page, tracked_top_level()) == [
        ("docs/no_such_page.md", [REPO / "docs/no_such_page.md"])]
