"""The documentation stays true: links and anchors resolve, the CLI reference matches the
commands, and no page grows by accident (a blanket replace once made docs/cli.md 15 MB)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from baton.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "bench").rglob("*.md"),
                *(ROOT / "examples").rglob("*.md")])
#: Far above any real page (the largest is about 50 KB); a page past it was mangled.
MAX_PAGE_BYTES = 200_000
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> str:
    """The page without its code blocks (a link inside a code sample is not a link)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"`|\*|_(?=\w)|(?<=\w)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text().splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    out.update(re.findall(r'<a (?:name|id)="([^"]+)"', page.read_text()))
    return out


def links() -> Iterator[tuple[Path, str]]:
    for page in PAGES:
        for target in _LINK.findall(_prose(page.read_text())):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not checked
                yield page, target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_size_is_sane(page: Path) -> None:
    size = page.stat().st_size
    assert size < MAX_PAGE_BYTES, f"{page.relative_to(ROOT)} is {size} bytes: mangled by an edit?"
    lines = page.read_text().splitlines()
    longest = max((len(line) for line in lines), default=0)
    assert longest < 2000, f"{page.relative_to(ROOT)} has a line of {longest} characters"


def test_relative_links_and_anchors_resolve() -> None:
    broken = []
    for page, target in links():
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def _commands(group: click.Group, prefix: str = "baton") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)


def _docs_text() -> str:
    return "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def test_every_command_and_option_is_documented() -> None:
    text = _docs_text()
    missing = []
    for path, cmd in _commands(main):
        if cmd.hidden:
            continue
        if f"`{path}" not in text and f"$ {path}" not in text:
            missing.append(f"{path}: no section or example")
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                names = [o for o in param.opts if o.startswith("--") and o != "--help"]
                if names and not any(re.search(re.escape(n) + r"\b", text) for n in names):
                    missing.append(f"{path} {names[0]}: undocumented option")
    assert not missing, "the docs do not describe:\n" + "\n".join(missing)


def _help_blocks(page: Path) -> Iterator[tuple[str, str]]:
    """(command line, the help text shown) for each ``$ baton ... --help`` block."""
    lines = page.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(r"\$ (baton(?: [a-z-]+)*) --help", line.strip())
        if not m:
            continue
        shown = []
        for follow in lines[i + 1:]:
            if follow.startswith("```") or follow.startswith("$ "):
                break
            shown.append(follow)
        yield m.group(1), "\n".join(shown).rstrip()


@pytest.mark.parametrize("page", [ROOT / "docs" / "cli.md", ROOT / "docs" / "registry.md"],
                         ids=lambda p: p.name)
def test_help_shown_in_docs_is_the_real_help(page: Path) -> None:
    blocks = list(_help_blocks(page))
    if page.name == "cli.md":
        assert len(blocks) >= 8, "docs/cli.md lost its --help blocks"
    runner = CliRunner()
    stale = []
    for command, shown in blocks:
        args = command.split()[1:] + ["--help"]
        result = runner.invoke(main, args, prog_name="baton", terminal_width=80)
        assert result.exit_code == 0, result.output
        if result.output.rstrip() != shown:
            stale.append(f"{page.name}: `{command} --help` differs from the real help:\n"
                         f"--- docs\n{shown}\n--- real\n{result.output.rstrip()}")
    assert not stale, "\n\n".join(stale)


_NO_DEFAULT = click.Option(["--x"]).default  # what click holds for an option given none


def _option_problems(path: str, option: click.Option) -> list[str]:
    name = option.opts[-1] if option.opts[-1].startswith("--") else option.opts[0]
    text = option.help or ""
    problems = [] if text.strip() else [f"{path} {name}: no help text"]
    if re.search(r"\bdefault\b", text, re.IGNORECASE):
        problems.append(f"{path} {name}: writes its default into the help; use show_default")
    default = option.default
    stated = default not in (None, _NO_DEFAULT, "", ()) and not option.is_flag
    if stated and not option.show_default:
        problems.append(f"{path} {name}: default {default!r} not shown (show_default=True)")
    return problems


def test_every_option_has_help_and_shows_its_default_one_way() -> None:
    """Each option says what it does; a default is shown one way, click's ``[default: …]``
    (a computed one in parentheses: ``show_default="…"``), never written into the text."""
    problems = [p for path, cmd in _commands(main) for param in cmd.params
                if isinstance(param, click.Option) and not param.hidden
                for p in _option_problems(path, param)]
    assert not problems, "options to fix:\n" + "\n".join(problems)


def test_serve_marks_its_stream_options_and_promote_names_its_stage_option() -> None:
    serve = main.commands["serve"]
    marked = {p.opts[0] for p in serve.params
              if isinstance(p, click.Option) and (p.help or "").startswith("[streams]")}
    assert marked == {"--input", "--output", "--dead-letter", "--group", "--max-batch",
                      "--labels"}
    promote = CliRunner().invoke(main, ["promote", "--help"], terminal_width=80).output
    assert "stage given by --to" in promote and "--to [validated|staging|production" in promote
