"""Staff guards for protected routes, as dependencies on the signed-in user.

``current_user`` already answers 401 (no token, bad token, revoked session, inactive account) and
reads the role from the database, so a role change takes effect on the next request, not when the
access token expires. These add the 403 for a signed-in user whose authority lacks the power; the
decision is :mod:`app.authority`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar.di import NamedDependency, Provide

from app.authority import Power, authority_of_user, may
from app.core.errors import PermissionDenied
from app.db.models import User


def require_power(power: Power) -> Callable[[User], Awaitable[User]]:
    """A dependency giving the signed-in user if their authority has ``power``."""

    async def signed_in_with_power(current_user: NamedDependency[User]) -> User:
        if not may(authority_of_user(current_user), power):
            raise PermissionDenied()
        return current_user

    return signed_in_with_power


# Controllers name these; a handler takes ``auditor`` (the login history), ``admin`` (who read it) or
# ``panel_admin`` (the admin panel) to be reachable only by those who have that power.
ROLE_DEPENDENCIES = {
    "auditor": Provide(require_power(Power.AUDIT)),
    "admin": Provide(require_power(Power.AUDIT_USAGE)),
}
PANEL_DEPENDENCY = Provide(require_power(Power.PANEL))
