"""What every console command shares: its settings, read once from the environment."""

from __future__ import annotations

import click

from app.core.settings import ConfigError, Settings


def load_settings() -> Settings:
    """The environment's settings, or the reason they are unusable as a clean command-line error."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
