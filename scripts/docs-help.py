#!/usr/bin/env python3
"""Rewrite every ``$ baton ... --help`` block in the docs with the command's real help.

tests/test_docs.py fails when a block differs from the real ``--help``; run this after
changing a command's options, then read the diff:

    .venv/bin/python scripts/docs-help.py && git diff docs/
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

from baton.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "docs" / "cli.md", ROOT / "docs" / "registry.md"]


def real_help(command: str) -> str:
    result = CliRunner().invoke(main, command.split()[1:] + ["--help"], prog_name="baton",
                                terminal_width=80)
    if result.exit_code != 0:
        sys.exit(f"{command} --help failed:\n{result.output}")
    return result.output.rstrip()


def rewrite(page: Path) -> bool:
    lines = page.read_text().splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        m = re.fullmatch(r"\$ (baton(?: [a-z-]+)*) --help", line.strip())
        if not m:
            continue
        while i < len(lines) and not (lines[i].startswith("```") or lines[i].startswith("$ ")):
            i += 1  # drop the old help text
        out.extend(real_help(m.group(1)).splitlines())
    text = "\n".join(out) + "\n"
    changed = text != page.read_text()
    if changed:
        page.write_text(text)
    return changed


if __name__ == "__main__":
    for page in PAGES:
        if rewrite(page):
            print(f"updated {page.relative_to(ROOT)}")
