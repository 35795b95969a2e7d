"""``baton image``: the bundle as a container image, built with podman, no registry pulls."""

from __future__ import annotations

from pathlib import Path

import click

from baton.cli.main import _settings, errors_to_exit, main, with_env_options


@main.command()
@click.argument("bundle")
@click.option("--tag", "-t", help="Image name.",
              show_default="localhost/baton/<bundle name>:<bundle version>")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the image as an OCI archive (podman load -i FILE).")
@click.option("--sbom", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a CycloneDX 1.5 SBOM (JSON) of every package in the image.")
@click.option("--registry", "registry_url", help="Take BUNDLE as NAME@VERSION from this "
              "registry (staging or production only).")
@click.option("--debian-mirror", metavar="URL", help="Debian mirror the base is built from.",
              show_default="the one apt uses on this machine")
@with_env_options
@errors_to_exit
def image(bundle: str, tag: str | None, save: Path | None, sbom: Path | None,
          registry_url: str | None, debian_mirror: str | None,
          wheelhouse: Path | None, offline: bool | None) -> None:
    """Build an OCI image serving BUNDLE (a folder, an archive, or NAME@VERSION).

    The engine, the bundle and its environment, on a Debian base built here once; packages
    installed offline from wheelhouses prepared on this machine. See docs/image.md.
    """
    from baton.image.build import build_image, save_archive
    from baton.image.sbom import write_sbom

    settings = _settings(wheelhouse=wheelhouse, offline=offline)
    built = build_image(bundle, settings, tag=tag, registry=registry_url,
                        debian_mirror=debian_mirror)
    base = "cached" if built.base.cached else f"built in {built.base.build_seconds:.1f}s"
    click.echo(f"built {built.tag} ({built.image_id[:12]}, {built.size_bytes / 1e6:.0f} MB) "
               f"in {built.total_seconds:.1f}s")
    click.echo(f"  bundle {built.bundle.name} {built.bundle.version} {built.bundle.digest}")
    click.echo(f"  base {built.base.tag} ({base}); layers: {built.cached_steps} of "
               f"{built.steps} steps from the cache")
    if save is not None:
        save_archive(built.tag, save)
        click.echo(f"  saved OCI archive {save}")
    if sbom is not None:
        count = write_sbom(built.tag, built.labels, sbom)
        click.echo(f"  SBOM {sbom}: {count} components (CycloneDX 1.5)")
    click.echo(f"run it: podman run --rm --read-only --cap-drop all -p 127.0.0.1:8000:8000 "
               f"{built.tag}")
