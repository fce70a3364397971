"""People's names as every entry point takes them (register, profile, the admin CLI).

Whitespace runs collapse to one space. Control (Cc), format (Cf) and private-use (Co) characters
are refused: bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069) make a name display
as something else than what is stored, in the security team's tables and in exports, and invisible
ones (zero-width space, soft hyphen, tag characters) hide text in it. Four format characters that
names are really written with stay allowed: the zero-width non-joiner and joiner (Persian and Indic
orthography, emoji sequences) and the left-to-right / right-to-left marks (mixed-script names);
none of them reorders text the way an override does.
"""

from __future__ import annotations

import unicodedata

NAME_MAX_LENGTH = 200
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Co"})
ALLOWED_FORMAT_CHARACTERS = frozenset({"\u200c", "\u200d", "\u200e", "\u200f"})


def normalise_name(value: str | None) -> str:
    return " ".join((value or "").split())


def _refused(ch: str) -> bool:
    return unicodedata.category(ch) in REFUSED_CATEGORIES and ch not in ALLOWED_FORMAT_CHARACTERS


def name_problem(text: str) -> str | None:
    """Why the (normalised) ``text`` cannot be a name, or None."""
    if len(text) > NAME_MAX_LENGTH or any(_refused(ch) for ch in text):
        return f"Name must be at most {NAME_MAX_LENGTH} printable characters, none hidden or direction-changing."
    return None
