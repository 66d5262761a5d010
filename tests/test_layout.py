"""The tree says what the README and the lint contracts say: every room of the router is
in the README's layout and under the import rules, every module the layout names exists,
and no code or doc names an issue or a phase of work."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROUTER = ROOT / "router"


def rooms() -> set[str]:
    return {path.parent.name for path in ROUTER.glob("*/__init__.py")}


def layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def layout_rooms() -> dict[str, str]:
    """Each router room the layout lists (an indented `name/` line), with its text."""
    described: dict[str, str] = {}
    room = None
    for line in layout_block().splitlines():
        started = re.match(r"^  (\w+)/\s", line)
        if started:
            room = started.group(1)
            described[room] = line
        elif room is not None and line.startswith("    "):
            described[room] += line
        else:
            room = None
    return described


def test_the_readme_layout_lists_every_room_of_the_router_and_no_other() -> None:
    assert set(layout_rooms()) == rooms()


def test_every_module_the_layout_names_is_in_its_room() -> None:
    for room, text in layout_rooms().items():
        for name in re.findall(r"([\w*]+\.py)", text):
            assert list((ROUTER / room).glob(name)), f"router/{room}/{name}"


def test_every_room_is_under_the_layer_contract() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layered = next(c for c in contracts if c["type"] == "layers" and c["containers"] == ["router"])
    assert rooms() <= set(layered["layers"])


HISTORY = re.compile(r"\bissues? ?#?\d+\b|\(#\d+\)|\bphase \d\b", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", "*.yaml", "*.yml", "*.js", "*.html"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


@pytest.mark.parametrize(
    ("words", "number"), [("issue ", 7), ("Issue #", 3), ("(#", 12), ("phase ", 2)]
)
def test_the_history_pattern_finds_what_it_is_for(words: str, number: int) -> None:
    """Each shape of a reference to past work, put together here so that this file does
    not itself name one."""
    assert HISTORY.search(f"{words}{number}{')' if words == '(#' else ''}")


def test_no_code_or_doc_names_an_issue_or_a_phase_of_work() -> None:
    this = Path(__file__).resolve()
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in tracked_text_files()
        if path != this and path.name != "RESULTS.md"  # measurements are dated history
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert found == []
