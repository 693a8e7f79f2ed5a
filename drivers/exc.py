"""Errors of the hardware drivers: one root, :class:`DriverError`.

The drivers stand alone (they import nothing of the unit), so the family has
its own root; leaves also inherit a builtin (``ValueError``,
``TimeoutError``, ``ConnectionError``) so callers may catch either. Messages
name the reader, light or pin they are about.

Card reads and reader faults never reach a caller as exceptions: a reader
thread reports them through its callbacks and counters. Only caller mistakes
(a bad config value, a malformed card pattern) raise at once.
"""

from __future__ import annotations


class DriverError(Exception):
    """Root of every error a driver raises on purpose."""


class ReaderError(DriverError):
    """A card reader, its port or its configuration."""


class ReaderConfigInvalid(ReaderError, ValueError):
    """A reader cannot be built from what it was given (driver, port URL, format)."""


class ReaderPortLost(ReaderError, ConnectionError):
    """The reader's port went away: unplugged, re-pointed or failing on read/write."""


class ReaderNotAnswering(ReaderError, TimeoutError):
    """A reader that should answer (PN532) did not, or stopped answering."""


class ReaderHung(ReaderError):
    """A reader that sends only noise: a candidate for a power cycle."""


class CardPatternInvalid(ReaderError, ValueError):
    """A card id or card-list pattern (hex, ``dec:``, ``w26:``) that cannot be used."""


class CardIdImplausible(CardPatternInvalid):
    """A well-formed number of a length no card id has: line noise, most likely."""
