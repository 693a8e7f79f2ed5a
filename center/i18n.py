"""Message catalogues of the centre's tools: zh-CN by default, English as written.

Each tool has its own gettext domain under ``center/locale/`` (``docs/centre.md``
says how to update one).
"""

from __future__ import annotations

import gettext
from pathlib import Path

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES = {"zh-CN": "zh_CN", "en": "en"}
DEFAULT_LANGUAGE = "zh-CN"


class Catalogue:
    """One domain's messages in the language chosen last (Chinese until told otherwise)."""

    def __init__(self, domain: str, locale_dir: Path = LOCALE_DIR) -> None:
        self.domain = domain
        self.locale_dir = locale_dir
        # A missing catalogue (a broken install) must not stop the CLI: English then.
        self.translation: gettext.NullTranslations = gettext.translation(
            domain, locale_dir, languages=[LANGUAGES[DEFAULT_LANGUAGE]], fallback=True)

    def use(self, lang: str = DEFAULT_LANGUAGE) -> None:
        """Speak ``zh-CN`` (the catalogue) or ``en`` (the messages as written) from now on."""
        code = LANGUAGES.get(lang)
        if code is None:
            raise ValueError(f"language {lang!r}: choose one of {', '.join(LANGUAGES)}")
        if code == "en":
            self.translation = gettext.NullTranslations()
        else:
            self.translation = gettext.translation(self.domain, self.locale_dir,
                                                   languages=[code])

    def gettext(self, message: str) -> str:
        return self.translation.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.translation.ngettext(singular, plural, n)
