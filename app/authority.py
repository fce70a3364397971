"""Who may do what to whom: the one authority order that every staff guard asks.

``user < support < security < admin`` (and the operator at a shell, above them all). ``user_type``
says what kind of platform user an account is; authority comes from the service's ``role``. The
Flask-era panel account (``user_type = 'admin'`` with ``role = 'user'``) is **support**: there is
no ``support`` role value, because that one Flask-era fact already says it and the tokens' ``role``
claim stays as the platform reads it. A role always wins: a security analyst whose ``user_type``
is ``admin`` (as ``create-admin`` used to make them) is security, and has no panel.

The rules, written out as a table in docs/authority.md:
- powers come with the authority, not with its rank: support has the panel, security the login
  history, admin both (and who read the history); the operator everything;
- nobody acts on an account whose authority is equal to or above their own (themselves included);
- nobody issues a recovery code to themselves, and staff accounts (support and above) get one only
  from the command line (``ladys-essence users recover``, recorded);
- nothing in the panel grants staff authority to an existing account (it would keep its password,
  PIN and sessions): ``ladys-essence users create-admin --promote`` does that. A new account the
  panel creates may be given only an authority below its creator's.

This module decides; the panel, the CLI and the audit guards raise what it answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from app.db.models import User

SUPPORT_USER_TYPE = "admin"  # the Flask-era panel account: support, unless a role grants more
PROMOTE_COMMAND = "ladys-essence users create-admin --promote --role support --phone <number> --name <name>"
RECOVER_COMMAND = "ladys-essence users recover --phone <number>"


class Authority(enum.IntEnum):
    USER = 0
    SUPPORT = 1
    SECURITY = 2
    ADMIN = 3
    OPERATOR = 4  # a shell with the service's environment (the CLI); no account has it

    @property
    def label(self) -> str:
        return self.name.lower()


ROLE_AUTHORITY = {"admin": Authority.ADMIN, "security": Authority.SECURITY}


class Power(enum.StrEnum):
    """What an authority may do without a target account."""

    PANEL = "panel"  # the admin panel: list and read accounts, act on those below
    AUDIT = "audit"  # the login history and the record of staff actions
    AUDIT_USAGE = "audit_usage"  # who read the login history


POWERS: dict[Authority, frozenset[Power]] = {
    Authority.USER: frozenset(),
    Authority.SUPPORT: frozenset({Power.PANEL}),
    Authority.SECURITY: frozenset({Power.AUDIT}),
    Authority.ADMIN: frozenset({Power.PANEL, Power.AUDIT, Power.AUDIT_USAGE}),
    Authority.OPERATOR: frozenset(Power),
}


class Action(enum.StrEnum):
    """What staff do to an account."""

    ACTIVATE = "activate"
    DEACTIVATE = "deactivate"
    DELETE = "delete"
    CHANGE_USER_TYPE = "change the user type of"
    RECOVER = "issue a recovery code for"
    UNLOCK = "unlock"
    END_SESSION = "end a session of"


def authority_of(role: str, user_type: str) -> Authority:
    if role in ROLE_AUTHORITY:
        return ROLE_AUTHORITY[role]
    return Authority.SUPPORT if user_type == SUPPORT_USER_TYPE else Authority.USER


def authority_of_user(user: User) -> Authority:
    return authority_of(user.role, user.user_type)


def columns_for(authority: Authority, user_type: str) -> tuple[str, str]:
    """The ``(role, user_type)`` an account gets for a staff ``authority``; ``user_type`` is the current one.

    Support is the panel's user type; security analysts are no panel account, so an ``admin`` user
    type is dropped for ``parent`` (an adult's kind); admins have the panel by their role and keep theirs.
    """
    if authority is Authority.SUPPORT:
        return "user", SUPPORT_USER_TYPE
    if authority is Authority.SECURITY:
        return "security", "parent" if user_type == SUPPORT_USER_TYPE else user_type
    if authority is Authority.ADMIN:
        return "admin", user_type
    raise ValueError(f"{authority.label} is no staff authority an account can be given")


ACCOUNT_SCOPE = "account"  # every signed-in account: its own profile, settings and sessions


def scopes_of(authority: Authority) -> list[str]:
    """An access token's ``scope`` (RFC 9068): ``account``, and one scope per power (docs/authority.md)."""
    return [ACCOUNT_SCOPE, *sorted(power.value for power in POWERS[authority])]


def may(authority: Authority, power: Power) -> bool:
    return power in POWERS[authority]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why staff may not do something: the HTTP status, a machine code and a message the panel shows."""

    status: int
    code: str
    message: str


def refusal(
    actor: Authority, actor_id: int | None, target: Authority, target_id: int, action: Action
) -> Refusal | None:
    """Why ``actor`` may not do ``action`` to the target account; ``None`` when it may."""
    if actor_id is not None and actor_id == target_id:
        if action is Action.RECOVER:
            return Refusal(409, "own_account", "You cannot issue a recovery code for your own account.")
        return Refusal(409, "own_account", f"You cannot {action.value} your own account.")
    if not may(actor, Power.PANEL):
        return Refusal(403, "forbidden", "You do not have permission to do this.")
    if action is Action.RECOVER and target >= Authority.SUPPORT and actor < Authority.OPERATOR:
        return Refusal(
            403,
            "staff_recovery_cli_only",
            f"This is a {target.label} account: staff accounts get a recovery code only from the command line "
            f"({RECOVER_COMMAND}), where it is recorded.",
        )
    if target >= actor:
        return Refusal(
            403,
            "outranked",
            f"This is a {target.label} account and yours is {actor.label}: you cannot {action.value} an account "
            "with the same or a higher authority than yours.",
        )
    return None


def grant_refusal(actor: Authority, granted: Authority, *, existing_account: bool) -> Refusal | None:
    """Why ``actor`` may not give an account ``granted`` authority; ``None`` when it may.

    An existing account would keep its password, PIN and sessions (whoever holds them would become
    staff at once), so staff authority goes to an existing account only by ``create-admin --promote``.
    """
    if granted == Authority.USER:
        return None
    if existing_account:
        return Refusal(
            403,
            "grant_through_cli",
            f"Making an existing account {granted.label} is done from the command line, which sets a new "
            f"password and ends every session of the account: {PROMOTE_COMMAND}.",
        )
    if granted >= actor:
        return Refusal(
            403,
            "outranked",
            f"Your account is {actor.label}: you cannot create a {granted.label} account "
            "(only an authority below your own).",
        )
    return None
