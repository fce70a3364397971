"""legacy import: phone-less accounts, the Flask-era columns the import needs, and where rows came from

- ``users.phone_number`` becomes nullable: family-managed children (and accounts whose Flask-era
  number collided or did not parse) are imported without one. The unique constraint stays; NULLs
  never clash, and sign-in looks users up by phone, so such an account simply cannot be found.
- ``users.current_session_data``: the Flask-era USSD session state, kept as it was.
- ``users.source`` and ``login_attempts.source``: ``api`` for what this service wrote, ``flask``
  for what ``ladys-essence legacy import`` brought in (a rerun recognises its own rows by it, and
  the security team can tell imported history apart).
- ``login_attempts.legacy_ip``: a Flask-era ``ip_address`` that is not an address, as it was typed
  (``ip_address`` is ``inet`` and stays NULL for those rows).

Revision ID: 0006_legacy
Revises: 0005_account_events
Create Date: 2026-12-01 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_legacy"
down_revision: str | None = "0005_account_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("users", "phone_number", existing_type=sa.String(length=20), nullable=True)
    op.add_column("users", sa.Column("current_session_data", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("source", sa.String(length=8), server_default="api", nullable=False))
    op.add_column("login_attempts", sa.Column("source", sa.String(length=8), server_default="api", nullable=False))
    op.add_column("login_attempts", sa.Column("legacy_ip", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("login_attempts", "legacy_ip")
    op.drop_column("login_attempts", "source")
    op.drop_column("users", "source")
    op.drop_column("users", "current_session_data")
    # Fails while phone-less accounts exist: they cannot be kept under the older schema.
    op.alter_column("users", "phone_number", existing_type=sa.String(length=20), nullable=False)
