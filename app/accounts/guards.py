"""Staff guards for protected routes, as dependencies on the signed-in user.

``current_user`` already answers 401 (no token, bad token, revoked session, inactive account) and
reads the role from the database, so a role change takes effect on the next request, not when the
access token expires. These add the 403 for a signed-in user whose authority lacks the power; the
decision is :mod:`app.authority`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from app.authority import Power, authority_of_user, may
from app.core.errors import PermissionDenied
from app.db.models import User


def _with_power(user: User, power: Power) -> User:
    if not may(authority_of_user(user), power):
        raise PermissionDenied()
    return user


def require_power(power: Power) -> Callable[[User], Awaitable[User]]:
    """A dependency giving the signed-in user if their authority has ``power``: the request's ORM
    session's ``User`` (``current_user``), for routes that change accounts."""

    async def signed_in_with_power(current_user: NamedDependency[User]) -> User:
        return _with_power(current_user, power)

    return signed_in_with_power


def require_power_to_read(power: Power) -> Callable[[User], Awaitable[User]]:
    """The same for routes that only read: the user from ``signed_in`` (one prepared statement on the
    session checks' own connections, app/sessions/direct.py), so a flood of such requests never takes
    the connections of the pool sign-in uses (docs/operations.md)."""

    # A snapshot with User's attributes (not a mapped User): not validated as one.
    async def signed_in_with_power(signed_in: SkipValidation[NamedDependency[User]]) -> User:
        return _with_power(signed_in, power)

    return signed_in_with_power


# Controllers name these; a handler takes ``auditor`` (the login history), ``admin`` (who read it) or
# ``panel_admin`` (the admin panel) to be reachable only by those who have that power. The history
# only reads, through its own pool (app/audit/history/connections.py); its handlers take the user as
# ``StaffReader`` (app/audit/history/controller.py).
ROLE_DEPENDENCIES = {
    "auditor": Provide(require_power_to_read(Power.AUDIT)),
    "admin": Provide(require_power_to_read(Power.AUDIT_USAGE)),
}
PANEL_DEPENDENCY = Provide(require_power(Power.PANEL))
