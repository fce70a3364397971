"""Postgres connection URLs, normalised in one place.

Operators write ``postgresql://user@host/db``; SQLAlchemy wants the driver in the scheme
(``postgresql+asyncpg://``) and asyncpg wants it without. Settings keep the SQLAlchemy form.
"""

from __future__ import annotations

SQLALCHEMY_SCHEME = "postgresql+asyncpg://"
_ACCEPTED_SCHEMES = (SQLALCHEMY_SCHEME, "postgresql://", "postgres://", "postgresql+psycopg://")


class DatabaseUrlError(ValueError):
    """Not a Postgres URL this service can use."""


def asyncpg_url(url: str) -> str:
    """Accept the usual ``postgresql://`` form; the driver is the app's business."""
    for prefix in _ACCEPTED_SCHEMES:
        if url.startswith(prefix):
            return SQLALCHEMY_SCHEME + url[len(prefix) :]
    raise DatabaseUrlError("DATABASE_URL must start with postgresql://")


def plain_dsn(url: str) -> str:
    """The same URL as asyncpg (and psql) take it."""
    return "postgresql://" + url[len(SQLALCHEMY_SCHEME) :] if url.startswith(SQLALCHEMY_SCHEME) else url


def row_count(status: str) -> int:
    """Rows a statement touched, from asyncpg's command tag (``INSERT 0 5``, ``COPY 5``, ``DELETE 3``).

    The count is always the tag's last word; a tag without one (``CREATE TABLE``) is a caller's bug.
    """
    head, _, count = status.rpartition(" ")
    if not head or not count.isdigit():
        raise ValueError(f"no row count in command tag {status!r}")
    return int(count)


def database_url_with(url: str, database: str) -> str:
    """Swap the database name in a ``postgresql://user@host/db?query`` URL."""
    head, sep, query = url.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{database}{sep}{query}"
