"""The unit's message catalogue: what installers and operators read, in Chinese or English.

Source strings are English; ``firmware_py/locale/zh_CN/LC_MESSAGES/xunfang.po``
(gettext domain ``xunfang``) translates them. Chinese is the default; English
is chosen with ``--lang en``, or when ``LANGUAGE``, ``LC_ALL``, ``LC_MESSAGES``
or ``LANG`` (the first one set) starts with ``en``. After editing the source
strings::

    pybabel extract -k _ -o firmware_py/locale/xunfang.pot firmware_py/selftest.py \\
        firmware_py/unitstatus.py firmware_py/enrol.py
    pybabel update -D xunfang -i firmware_py/locale/xunfang.pot -d firmware_py/locale
    pybabel compile -D xunfang -d firmware_py/locale      # the .mo is committed
"""

from __future__ import annotations

import gettext
import os
from collections.abc import Callable, Mapping
from pathlib import Path

DOMAIN = "xunfang"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES = ("zh", "en")

Translate = Callable[[str], str]


def choose_language(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``"zh"`` or ``"en"``: the ``--lang`` flag, else the locale variables, else Chinese."""
    if flag:
        return "en" if flag.lower().startswith("en") else "zh"
    env = os.environ if environ is None else environ
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(var, "")
        if value:
            return "en" if value.lower().startswith("en") else "zh"
    return "zh"


def translator(language: str) -> Translate:
    """The gettext function for ``language``; English is the source text itself."""
    if language == "en":
        return gettext.NullTranslations().gettext
    # fallback=False: a missing catalogue is a packaging fault, not a reason to show English.
    return gettext.translation(DOMAIN, localedir=LOCALE_DIR, languages=["zh_CN"]).gettext
