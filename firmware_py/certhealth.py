"""The unit's broker certificate in health: days to expiry, and when to renew.

Health carries ``cert_expires_in_days`` and ``cert``: ``ok``, ``renew`` (fewer
than :data:`RENEW_DAYS` days left: enrol again, ``docs/security.md``),
``expired``, ``unknown`` (the file cannot be read), or null for both when the
unit has no client certificate configured.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509

__all__ = ["RENEW_DAYS", "certificate_health"]

RENEW_DAYS = 30


def certificate_health(cert_path: Path | None, now_ms: int) -> dict[str, Any]:
    """``{"cert": state, "cert_expires_in_days": days}`` for the health report."""
    if cert_path is None:
        return {"cert": None, "cert_expires_in_days": None}
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError):
        return {"cert": "unknown", "cert_expires_in_days": None}
    now = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
    days = (cert.not_valid_after_utc - now).total_seconds() / 86400
    state = "expired" if days <= 0 else "renew" if days < RENEW_DAYS else "ok"
    return {"cert": state, "cert_expires_in_days": round(days, 1)}
