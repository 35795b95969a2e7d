"""Stream verbs of the ``baton`` command."""

from __future__ import annotations

import click

from baton.cli.main import errors_to_exit, main


@main.command()
@click.option("--dead-letter", "dead_letter", required=True,
              help="Where the dead letters are (a stream URL).")
@click.option("--to", "target", required=True, help="The input to send them back to.")
@click.option("--stage", "stages", multiple=True,
              type=click.Choice(["decode", "contract", "model", "output_contract",
                                 "labels"]),
              help="Only dead letters of this stage (repeatable).")
@click.option("--limit", type=int, help="At most this many.")
@click.option("--group", default="baton-replay", show_default=True,
              help="Consumer group on the dead-letter stream: replayed letters are "
                   "acknowledged there and not replayed again.")
@errors_to_exit
def replay(dead_letter: str, target: str, stages: tuple[str, ...], limit: int | None,
           group: str) -> None:
    """Re-submit dead letters to the input, once the cause is fixed."""
    import asyncio

    from baton.streams.base import redact_url
    from baton.streams.replay import replay as run

    result = asyncio.run(run(dead_letter, target, stages=set(stages) or None, limit=limit,
                             group=group))
    per = ", ".join(f"{k}: {v}" for k, v in sorted(result.by_stage.items())) or "none"
    click.echo(f"replayed {result.replayed} dead letter(s) to {redact_url(target)} ({per}); "
               f"skipped {result.skipped}")
