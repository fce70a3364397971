"""Role checks for protected routes, as dependencies on the signed-in user.

``current_user`` already answers 401 (no token, bad token, revoked session, inactive account) and
reads the role from the database, so a role change takes effect on the next request, not when the
access token expires. These add the 403 for a signed-in user whose role is not allowed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar.di import NamedDependency, Provide

from app.core.errors import PermissionDenied
from app.db.models import ROLES, User

AUDIT_ROLES = frozenset({"security", "admin"})
ADMIN_ROLES = frozenset({"admin"})


def require_role(allowed: frozenset[str]) -> Callable[[User], Awaitable[User]]:
    """A dependency giving the signed-in user if their role is in ``allowed``."""
    unknown = allowed - set(ROLES)
    assert not unknown, f"unknown roles {unknown}"

    async def signed_in_with_role(current_user: NamedDependency[User]) -> User:
        if current_user.role not in allowed:
            raise PermissionDenied()
        return current_user

    return signed_in_with_role


# Controllers name these; a handler takes ``auditor`` or ``admin`` to be reachable only by those roles.
ROLE_DEPENDENCIES = {
    "auditor": Provide(require_role(AUDIT_ROLES)),
    "admin": Provide(require_role(ADMIN_ROLES)),
}
