"""Every `derlink ...` command shown in the README and the guides in docs/ exists: it parses with the
real command-line parser (optional parts in [brackets] left out)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from derlink.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(path: Path) -> list[str]:
    """The derlink command lines of the file's bash blocks (continuations joined, comments dropped)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            for part in line.split(" #", 1)[0].split(";"):  # `a ; b`: two commands
                if part.strip().startswith("derlink "):
                    found.append(part.strip())
    return found


def test_the_guides_show_commands() -> None:
    names = {p.name for p in DOCS}
    assert names >= {"README.md", "operator.md", "installer.md", "test-lab.md", "deployment.md"}
    assert sum(len(commands(p)) for p in DOCS) >= 40


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_documented_command_parses(path: Path) -> None:
    for line in commands(path):
        text = re.sub(r"\s*\[[^\]]*\]", "", line)  # optional parts
        text = re.sub(r"(\S+)\|\S+", r"\1", text)   # first of alternatives
        argv = shlex.split(text)[1:]
        for shell in (">", ">>", "|"):  # a redirection or a pipe ends the command's own arguments
            if shell in argv:
                argv = argv[: argv.index(shell)]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{path.name}: `{line}` does not parse (exit {exc.code})")
