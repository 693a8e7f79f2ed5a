"""One exceptions module for the unit.

A root error, a family per subsystem, and leaves that also inherit a builtin
so callers may catch either (the gpiozero habit). Messages name the file, key
path, port, pin or topic they are about.
"""

from __future__ import annotations


class XunfangError(Exception):
    """Root of every error the unit raises on purpose."""


class ConfigError(XunfangError):
    """The unit's configuration cannot be used."""


class ConfigInvalid(ConfigError, ValueError):
    """The configuration was read but breaks one or more rules.

    ``problems`` holds one line per problem, each naming its key path.
    """

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))


class ConfigUnreadable(ConfigError, OSError):
    """The configuration file could not be read or is not TOML."""


class JournalError(XunfangError):
    """The journal could not do what was asked."""


class JournalWriteFailed(JournalError, OSError):
    """An event could not be committed to disk: the caller must not signal success."""


class JournalUnavailable(JournalWriteFailed):
    """The journal file cannot be opened for writing now (a full disk, an I/O error);
    it is not damaged, and may work again once the cause is gone."""


class JournalCorrupt(JournalError, ValueError):
    """The journal file is not a xunfang journal or fails its integrity check."""


class JournalTooNew(JournalError):
    """The journal was written by a newer version in a format this one cannot use.

    Not :class:`JournalCorrupt`: the file is sound and must not be moved aside.
    """


class RuntimeFault(XunfangError):
    """A component of the runtime failed to start or stop."""


class SignatureError(XunfangError, ValueError):
    """Signing: a signed envelope, a key or a key file cannot be used.

    ``reason`` is a short code for the ``command`` event (or health counter)
    of whoever rejects the message; the message itself says what and where.
    """

    reason = "signature"


class SignatureMissing(SignatureError):
    """The envelope carries no ``sig`` (or is not a JSON object at all)."""

    reason = "missing_signature"


class SignatureMalformed(SignatureError):
    """``sig`` is not the standard, padded base64 of 64 bytes."""

    reason = "malformed_signature"


class SignatureKeyUnknown(SignatureError):
    """The envelope names no key, or a key this receiver does not trust."""

    reason = "unknown_key"


class SignatureInvalid(SignatureError):
    """The signature does not verify under the named key: forged or altered."""

    reason = "bad_signature"


class EnvelopeNotCanonical(SignatureError):
    """The content has no canonical form: a float, a non-ASCII or non-string
    key, a lone surrogate, an integer beyond 2**53, or nesting too deep."""

    reason = "not_canonical"


class KeyInvalid(SignatureError):
    """A public key text or a key file's contents is not a usable Ed25519 key."""

    reason = "bad_key"


class KeyFileInsecure(SignatureError, PermissionError):
    """A private key file that group or others may read or write: refused."""

    reason = "key_file_insecure"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class KeyFileExists(SignatureError, FileExistsError):
    """A new key would overwrite an existing file: refused."""

    reason = "key_file_exists"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
