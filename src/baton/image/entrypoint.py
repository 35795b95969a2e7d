"""The image's entrypoint: ``baton serve`` of the bundle inside, configured by variables.

``podman run IMAGE`` serves the bundle; ``podman run IMAGE baton check`` checks it;
``podman run IMAGE CMD...`` runs any other command. Every ``baton serve`` option is available
as a variable: the settings ones as ``BATON_<FIELD>`` (docs/configuration.md), the others as
``BATON_SERVE_<OPTION>`` (click's automatic variables, e.g. ``BATON_SERVE_CANARY``), so
docs/image.md's table follows the command's options without a list to keep in step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from baton.image.layout import BUNDLE, ENVS, HOME

PREFIX = "BATON"


def link_environments(home: Path) -> None:
    """``$BATON_HOME/envs`` -> the environments built into the image. The image holds the
    link; a tmpfs or emptyDir mounted on BATON_HOME hides it, so it is made again here."""
    link = home / "envs"
    if link.exists() or link.is_symlink():
        return
    try:
        home.mkdir(parents=True, exist_ok=True)
        link.symlink_to(str(ENVS))
    except OSError as err:
        print(f"baton image: cannot link {link} -> {ENVS} ({err.strerror}); BATON_HOME "
              "must be writable: mount a volume or tmpfs there", file=sys.stderr)


def baton_args(args: list[str]) -> list[str]:
    """``serve`` and ``check`` without a bundle (or, for serve, a registry or deployment
    file, given as an option or a variable) get the image's bundle."""
    from baton.cli.main import main

    if not args or args[0] not in ("serve", "check"):
        return args
    command = main.commands[args[0]]
    # Parsed under baton's own context, as main.main will: click caches a command's help
    # option on first use, so a context without the group's settings would leave the
    # command answering only --help (not -h) for the rest of the process.
    parent = click.Context(main, info_name="baton", auto_envvar_prefix=PREFIX,
                           **main.context_settings)
    with command.make_context(args[0], list(args[1:]), parent=parent,
                              resilient_parsing=True) as ctx:
        params = ctx.params
    given = params.get("bundles") or params.get("bundle") or params.get("registry_url") \
        or params.get("deployment")
    return args if given else [*args, str(BUNDLE)]


def run(argv: list[str]) -> None:
    args = argv or ["baton", "serve"]
    link_environments(Path(os.environ.get("BATON_HOME", str(HOME))))
    if args[0] != "baton":
        os.execvp(args[0], args)
    from baton.cli.main import main

    main.main(args=baton_args(args[1:]), prog_name="baton", auto_envvar_prefix=PREFIX)


def serve_variables() -> list[tuple[str, str, str]]:
    """(option, variable, help) for every ``baton serve`` option, as docs/image.md lists."""
    from baton.cli.main import main
    from baton.settings import _field_types

    settings = set(_field_types())
    rows = []
    for param in main.commands["serve"].params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        if isinstance(param.envvar, str):
            variable = param.envvar
        elif param.name in settings:
            variable = f"{PREFIX}_{param.name.upper()}"
        else:
            variable = f"{PREFIX}_SERVE_{param.name.upper()}"
        rows.append((max(param.opts, key=len), variable, param.help or ""))
    return rows


if __name__ == "__main__":
    run(sys.argv[1:])
