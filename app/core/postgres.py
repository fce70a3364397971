"""Small Postgres helpers shared by every package that talks to asyncpg directly."""

from __future__ import annotations

ASYNCPG_SCHEME = "postgresql+asyncpg://"


def inserted_rows(status: str) -> int:
    """Rows a statement touched, from asyncpg's command tag (``INSERT 0 5``, ``COPY 5``, ``DELETE 3``).

    The count is always the tag's last word; a tag without one (``CREATE TABLE``) is a caller's bug.
    """
    head, _, count = status.rpartition(" ")
    if not head or not count.isdigit():
        raise ValueError(f"no row count in command tag {status!r}")
    return int(count)


def plain_dsn(url: str) -> str:
    """A SQLAlchemy ``postgresql+asyncpg://`` URL as the plain DSN asyncpg and libpq accept."""
    if url.startswith(ASYNCPG_SCHEME):
        return "postgresql://" + url[len(ASYNCPG_SCHEME) :]
    return url
