"""The USSD menu texts the platform team copies from docs/recovery.md fit a USSD screen."""

from __future__ import annotations

import re

from app.recovery.controller import NoAccount, ResetLocked, WrongAnswer, sms_text, ussd_code_text
from tests.conftest import PROJECT_ROOT


def menu_texts() -> list[str]:
    doc = (PROJECT_ROOT / "docs" / "recovery.md").read_text(encoding="utf-8")
    section = doc.split("## USSD menu texts", 1)[1].split("\n## ", 1)[0]
    texts = [text.replace("\\n", "\n") for text in re.findall(r"`([^`]+)`", section)]
    assert len(texts) >= 10, texts
    return texts


def test_every_menu_text_fits_one_screen() -> None:
    for text in menu_texts():
        assert len(text) <= 160, text


def test_the_answers_shown_on_the_menu_fit_one_screen_and_are_the_documented_ones() -> None:
    documented = set(menu_texts())
    for error in (NoAccount, ResetLocked, WrongAnswer):
        assert len(error.message) <= 160 and error.message in documented, error.message
    assert len(ussd_code_text("123456", 10)) <= 160 and ussd_code_text("123456", 10) in documented
    assert len(sms_text("123456", 10)) <= 160
