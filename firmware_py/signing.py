"""Signed envelopes: Ed25519 keys, canonical bytes, signing and signature checks.

The centre signs every command, desired-state document and ack it sends a
unit (docs/mqtt-api.md, "Signed envelope"); the unit checks the signature against
the public keys in its config before anything else looks at the message.
This module does the cryptographic half only: whether the target, expiry and
id of a correctly signed message are acceptable is the command handler's job.

The signature covers :func:`canonical_bytes`: the envelope without ``sig``,
as ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
in UTF-8. That form equals RFC 8785 (JCS) only while the content has no
floats, only ASCII keys and integers a double holds exactly, so those are
refused on both sides; another vendor's JCS library then produces the same
bytes.

Private keys live on the centre (or the ledger) in a PEM PKCS8 file, created
owner-only, with the key's name on a comment line before the PEM block::

    # xunfang key: centre-2026
    -----BEGIN PRIVATE KEY-----
    ...

PEM readers (OpenSSL, ``cryptography``) skip text before ``-----BEGIN``, so
the file stays an ordinary key file for other tools.

Example::

    key = SigningKey.generate("centre-2026")
    env = key.sign_envelope("level", {"level": 1}, site="zhuantang", units=["*"])
    verify_envelope(env, {"centre-2026": key.public_b64()})
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from firmware_py.clock import Clock, SystemClock, parse_rfc3339, rfc3339_ms
from firmware_py.exc import (
    EnvelopeNotCanonical,
    KeyFileExists,
    KeyFileInsecure,
    KeyInvalid,
    SignatureInvalid,
    SignatureKeyUnknown,
    SignatureMalformed,
    SignatureMissing,
)

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_DEPTH",
    "MAX_SAFE_INT",
    "SigningKey",
    "canonical_bytes",
    "canonical_json",
    "config_line",
    "envelope_id_ok",
    "key_file_bytes",
    "key_name_ok",
    "load_signing_key",
    "parse_key_file",
    "public_key_from_b64",
    "save_signing_key",
    "verify_envelope",
]

#: How long a message may be applied when the signer gives neither ``ttl_s``
#: nor ``expires_at``. Right for one-shot commands; retained desired documents
#: and acks, which a unit may first see after days offline, want a longer one.
DEFAULT_TTL_S = 300

#: Containers nested deeper than this have no canonical form here. Real
#: envelopes go four deep (envelope, args, cards list, card).
MAX_DEPTH = 32

#: RFC 8785 writes numbers as IEEE doubles: beyond this an integer would be
#: written differently by a JCS library than by Python, so it is refused.
MAX_SAFE_INT = 2**53 - 1

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # as config.KEY_NAME_PATTERN
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SITE_UNIT_RE = re.compile(r"[a-z0-9-]{1,32}")
_KEY_LINE_RE = re.compile(r"#\s*xunfang key:\s*(.*?)\s*")
_KEY_FILE_MAX = 64 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

JSONValue = Any  # None | bool | int | str | list[JSONValue] | dict[str, JSONValue]


# -- canonical form ---------------------------------------------------------


def _where(path: str) -> str:
    return path or "(top level)"


def _check_text(text: str, path: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        # json.loads happily yields lone surrogates from "\ud800"; UTF-8 cannot hold them.
        raise EnvelopeNotCanonical(
            f"{_where(path)}: {what} holds a lone surrogate, which UTF-8 cannot encode"
        ) from err


def _check(value: object, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise EnvelopeNotCanonical(f"{_where(path)}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            # Not f"{value}": Python refuses to print integers of over 4300 digits.
            shown = str(value) if value.bit_length() < 128 else f"of {value.bit_length()} bits"
            raise EnvelopeNotCanonical(
                f"{_where(path)}: integer {shown} is beyond ±(2**53-1); send it as a string"
            )
        return
    if isinstance(value, float):
        raise EnvelopeNotCanonical(
            f"{_where(path)}: float {value!r} in a signed message; use an integer "
            "(e.g. milliseconds) or a string"
        )
    if isinstance(value, str):
        _check_text(value, path, "string")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EnvelopeNotCanonical(
                    f"{_where(path)}: key {key!r} is a {type(key).__name__}, not a string"
                )
            child = f"{path}.{key}" if path else key
            if not key.isascii():
                raise EnvelopeNotCanonical(
                    f"{_where(path)}: key {key!r} is not ASCII (keys must sort the same "
                    "in UTF-16 and code points)"
                )
            _check(item, child, depth + 1)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]", depth + 1)
        return
    raise EnvelopeNotCanonical(
        f"{_where(path)}: a {type(value).__name__} has no JSON form in a signed message"
    )


def canonical_json(value: JSONValue) -> bytes:
    """The canonical UTF-8 JSON of any float-free JSON value.

    Raise :class:`EnvelopeNotCanonical` (a ValueError) naming the path, e.g.
    ``args.cards[2].valid_to``, of the first thing that has no canonical form.
    """
    _check(value, "", 0)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical_bytes(envelope: Mapping[str, JSONValue]) -> bytes:
    """The bytes a signature covers: the envelope without ``sig``, canonical.

    Only the top-level ``sig`` is left out; an ``args`` holding a ``sig`` key
    is signed like any other content.
    """
    if not isinstance(envelope, Mapping):
        raise EnvelopeNotCanonical(
            f"a signed envelope is a JSON object, not a {type(envelope).__name__}"
        )
    return canonical_json({k: v for k, v in envelope.items() if k != "sig"})


# -- names and ids ----------------------------------------------------------


def envelope_id_ok(id: object) -> bool:
    """True for a plausible envelope id: 1 to 64 of ``[A-Za-z0-9_-]``."""
    return isinstance(id, str) and _ID_RE.fullmatch(id) is not None


def key_name_ok(name: object) -> bool:
    """True for a usable key name (``centre-2026``): 1 to 64 of ``[A-Za-z0-9._-]``,
    the rule config applies to ``command_keys`` and ``ack_keys``. The name is
    a TOML key, a file comment and the envelope's ``key``: nothing to quote."""
    return isinstance(name, str) and _KEY_NAME_RE.fullmatch(name) is not None


def _require_key_name(name: object) -> str:
    if not key_name_ok(name):
        raise KeyInvalid(f"key name {name!r} is not 1 to 64 of letters, digits, '.', '_', '-'")
    assert isinstance(name, str)
    return name


def config_line(name: str, public_b64: str) -> str:
    """A public key as a ``[security] command_keys`` / ``ack_keys`` TOML line."""
    return f'"{name}" = "{public_b64}"'


# -- public keys ------------------------------------------------------------


def _b64decode_strict(text: str) -> bytes:
    """Standard base64 with padding, and only its one canonical spelling.

    ``b64decode(validate=True)`` still accepts nonzero spare bits ("AB==" and
    "AA==" both give one zero byte); re-encoding closes that, so a given
    signature or key has exactly one text.
    """
    raw = base64.b64decode(text, validate=True)
    if base64.b64encode(raw).decode("ascii") != text:
        raise binascii.Error("not the canonical base64 spelling")
    return raw


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from the standard base64 of its 32 raw bytes.

    Surrounding whitespace (a pasted newline) is ignored; anything else that is
    not exactly such a key raises :class:`KeyInvalid` (a ValueError).
    """
    if not isinstance(text, str):
        raise KeyInvalid(f"public key must be a base64 string, not a {type(text).__name__}")
    stripped = text.strip()
    try:
        # Not _b64decode_strict: config accepts any padded spelling of a key, and
        # a key's spelling, unlike a signature's, is no one's input to forge.
        raw = base64.b64decode(stripped, validate=True)
    except ValueError as err:  # binascii.Error, or non-ASCII text
        raise KeyInvalid(
            f"public key {stripped[:60]!r} is not standard base64 with padding: {err}"
        ) from err
    if len(raw) != 32:
        raise KeyInvalid(
            f"public key {stripped[:60]!r} is {len(raw)} bytes; an Ed25519 public key is 32"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _public_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes_raw()).decode("ascii")


# -- signing ----------------------------------------------------------------


def _to_ms(value: str | datetime, what: str) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{what}: datetime {value!r} has no zone; give it tzinfo=UTC")
        dt = value
    elif isinstance(value, str):
        try:
            dt = parse_rfc3339(value)
        except ValueError as err:
            raise ValueError(f"{what}: {value!r} is not an RFC 3339 time: {err}") from err
    else:
        raise ValueError(f"{what}: expected an RFC 3339 string or datetime, got {value!r}")
    # Exact integer arithmetic: a float timestamp could round 123 ms to 122.
    return (dt - _EPOCH) // timedelta(milliseconds=1)


class SigningKey:
    """An Ed25519 private key with the name receivers know its public half by.

    Build one with :meth:`generate` or :func:`load_signing_key`; the private
    bytes never appear in its repr.
    """

    def __init__(self, private_key: Ed25519PrivateKey, name: str) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise KeyInvalid(f"key {name!r} is a {type(private_key).__name__}, not Ed25519")
        self._key = private_key
        self._name = _require_key_name(name)

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        """A new random key called ``name``."""
        return cls(Ed25519PrivateKey.generate(), name)

    @property
    def name(self) -> str:
        """The key's name, as envelopes' ``key`` and config's key tables give it."""
        return self._name

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def public_b64(self) -> str:
        """Standard base64 of the raw 32-byte public key: what config holds."""
        return _public_b64(self._key.public_key())

    def config_line(self) -> str:
        """``"centre-2026" = "BASE64…"``, ready for ``command_keys`` or ``ack_keys``."""
        return config_line(self._name, self.public_b64())

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def sign_envelope(
        self,
        name: str,
        args: Mapping[str, JSONValue],
        site: str,
        units: Sequence[str],
        ttl_s: int | None = None,
        expires_at: str | datetime | None = None,
        issued_at: str | datetime | None = None,
        id: str | None = None,
        clock: Clock | None = None,
    ) -> dict[str, JSONValue]:
        """A signed envelope, exactly as docs/mqtt-api.md lays it out.

        ``issued_at`` defaults to now (from ``clock``, else the system clock);
        the envelope always has an ``expires_at``: the one given, else
        ``issued_at + ttl_s`` (default :data:`DEFAULT_TTL_S`). Give at most one
        of ``ttl_s`` and ``expires_at``. Times are written as
        ``2026-11-28T15:04:05.123Z`` whatever form they came in. ``id`` defaults
        to 32 random hex digits. ``args`` is copied, so changing it afterwards
        cannot change what was signed.

        Caller mistakes (a float in ``args``, a bad site or unit id, a bare
        string for ``units``, expiry not after issue) raise ValueError at once.
        """
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(f"message name {name!r} is not 1 to 64 of [A-Za-z0-9._-]")
        if not isinstance(args, Mapping):
            raise ValueError(f"args must be a JSON object, not a {type(args).__name__}")
        # Through JSON and back: a private deep copy that holds only lists and dicts,
        # so the returned envelope is what a receiver will parse.
        args_copy = json.loads(canonical_json({"args": dict(args)}).decode("utf-8"))["args"]
        if not isinstance(site, str) or not _SITE_UNIT_RE.fullmatch(site):
            raise ValueError(f"target site {site!r} is not [a-z0-9-]{{1,32}}")
        if isinstance(units, str) or not isinstance(units, Sequence) or not units:
            # A bare "zt-pp-03" would otherwise become ["z", "t", ...].
            raise ValueError(f"target units must be a non-empty list of unit ids, got {units!r}")
        for unit in units:
            if unit != "*" and (not isinstance(unit, str) or not _SITE_UNIT_RE.fullmatch(unit)):
                raise ValueError(f"target unit {unit!r} is neither '*' nor [a-z0-9-]{{1,32}}")
        if id is None:
            id = secrets.token_hex(16)
        elif not envelope_id_ok(id):
            raise ValueError(f"envelope id {id!r} is not 1 to 64 of [A-Za-z0-9_-]")

        if issued_at is None:
            issued_ms = (clock if clock is not None else SystemClock()).wall_ms()
        else:
            issued_ms = _to_ms(issued_at, "issued_at")
        if expires_at is not None:
            if ttl_s is not None:
                raise ValueError("give ttl_s or expires_at, not both")
            expires_ms = _to_ms(expires_at, "expires_at")
        else:
            ttl = DEFAULT_TTL_S if ttl_s is None else ttl_s
            if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
                raise ValueError(f"ttl_s must be a positive whole number of seconds, got {ttl!r}")
            expires_ms = issued_ms + ttl * 1000
        if expires_ms <= issued_ms:
            raise ValueError(
                f"expires_at {rfc3339_ms(expires_ms)} is not after "
                f"issued_at {rfc3339_ms(issued_ms)}"
            )

        envelope: dict[str, JSONValue] = {
            "id": id,
            "name": name,
            "args": args_copy,
            "target": {"site": site, "units": list(units)},
            "issued_at": rfc3339_ms(issued_ms),
            "expires_at": rfc3339_ms(expires_ms),
            "key": self._name,
        }
        envelope["sig"] = base64.b64encode(self.sign(canonical_bytes(envelope))).decode("ascii")
        return envelope

    def __repr__(self) -> str:
        return f"SigningKey(name={self._name!r}, public={self.public_b64()!r})"


# -- verifying --------------------------------------------------------------


def _describe(envelope: Mapping[str, JSONValue]) -> str:
    ident = envelope.get("id")
    return f"envelope {ident!r}" if envelope_id_ok(ident) else "envelope"


def verify_envelope(
    envelope: Mapping[str, JSONValue],
    keys: Mapping[str, str | Ed25519PublicKey],
) -> None:
    """Return if ``envelope``'s signature verifies under the key it names, which
    must be in ``keys`` (name → base64 public key, or a key object); raise
    otherwise:

    - :class:`SignatureMissing`: no ``sig`` (or not an object at all);
    - :class:`SignatureMalformed`: ``sig`` is not padded base64 of 64 bytes;
    - :class:`SignatureKeyUnknown`: no ``key``, or one not in ``keys``;
    - :class:`EnvelopeNotCanonical`: content the signer could not have signed;
    - :class:`SignatureInvalid`: the signature does not match.

    All are :class:`SignatureError` and ValueError. A malformed key in ``keys``
    itself raises :class:`KeyInvalid` (a config error, caught at load time).
    Target, expiry and replay are not looked at here.
    """
    if not isinstance(envelope, Mapping):
        raise SignatureMissing(
            f"signed message is a {type(envelope).__name__}, not a JSON object: nothing signed"
        )
    what = _describe(envelope)
    sig = envelope.get("sig")
    if sig is None or sig == "":
        raise SignatureMissing(f"{what} has no sig")
    if not isinstance(sig, str):
        raise SignatureMalformed(f"{what}: sig is a {type(sig).__name__}, not a base64 string")
    try:
        raw_sig = _b64decode_strict(sig)
    except ValueError as err:
        raise SignatureMalformed(f"{what}: sig is not standard base64 with padding: {err}") from err
    if len(raw_sig) != 64:
        raise SignatureMalformed(f"{what}: sig is {len(raw_sig)} bytes; Ed25519 gives 64")

    key_name = envelope.get("key")
    if not isinstance(key_name, str) or not key_name:
        raise SignatureKeyUnknown(f"{what} names no key")
    if key_name not in keys:
        trusted = ", ".join(sorted(keys)) or "none"
        raise SignatureKeyUnknown(
            f"{what} is signed with key {key_name[:64]!r}, not trusted here (trusted: {trusted})"
        )
    public = keys[key_name]
    if not isinstance(public, Ed25519PublicKey):
        try:
            public = public_key_from_b64(public)
        except KeyInvalid as err:
            raise KeyInvalid(f"trusted key {key_name!r}: {err}") from err

    data = canonical_bytes(envelope)
    try:
        public.verify(raw_sig, data)
    except InvalidSignature as err:
        raise SignatureInvalid(
            f"{what}: signature does not verify under key {key_name!r} (forged or altered)"
        ) from err


# -- key files --------------------------------------------------------------


def key_file_bytes(key: SigningKey) -> bytes:
    """The key file's contents: the name comment, then unencrypted PEM PKCS8."""
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return f"# xunfang key: {key.name}\n".encode("ascii") + pem


def save_signing_key(key: SigningKey, path: str | os.PathLike[str]) -> None:
    """Write ``key`` to a new file at ``path``, owner-only (0600).

    The file is created with mode 0600 by ``open(O_CREAT|O_EXCL)`` itself, so
    it is never readable by others, not even between create and chmod; an
    existing file (or symlink) is never overwritten: :class:`KeyFileExists`.
    """
    where = os.fspath(path)
    data = key_file_bytes(key)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(where, flags, 0o600)
    except FileExistsError as err:
        raise KeyFileExists(
            where, f"{where} already exists: refusing to overwrite a key file (move it first)"
        ) from err
    try:
        # The umask can only remove bits; a strict one (077 is fine, 377 is not)
        # could leave the owner unable to read the key back.
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(where)
        raise
    os.close(fd)
    # Make the new directory entry durable too: a key lost to a power cut after
    # its public half was pasted into every unit's config is a site visit.
    try:
        dir_fd = os.open(os.path.dirname(os.path.abspath(where)), os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _stored_name(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("-----BEGIN"):
            break
        match = _KEY_LINE_RE.fullmatch(line)
        if match:
            return match.group(1)
    return None


def parse_key_file(data: bytes, path: str = "key file", name: str | None = None) -> SigningKey:
    """A :class:`SigningKey` from key file contents (see :func:`load_signing_key`)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise KeyInvalid(f"{path}: not a PEM key file (not text)") from err
    stored = _stored_name(text)
    if stored is not None and not key_name_ok(stored):
        raise KeyInvalid(f"{path}: its '# xunfang key:' line names {stored!r}, not a key name")
    if name is not None:
        _require_key_name(name)
        if stored is not None and stored != name:
            raise KeyInvalid(
                f"{path} holds key {stored!r}, not {name!r}: envelopes would name the "
                "wrong key and be rejected"
            )
    elif stored is None:
        raise KeyInvalid(
            f"{path} has no '# xunfang key: NAME' line before the PEM block: give the key's name"
        )
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:  # cryptography's way of saying "encrypted, no password"
        raise KeyInvalid(f"{path}: the key is encrypted; xunfang key files are not") from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise KeyInvalid(f"{path}: not a PEM private key: {err}") from err
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyInvalid(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
    final = name if name is not None else stored
    assert final is not None
    return SigningKey(private, final)


def load_signing_key(path: str | os.PathLike[str], name: str | None = None) -> SigningKey:
    """Read a private key file written by :func:`save_signing_key` (or any
    unencrypted PEM Ed25519 key, given ``name``).

    The name comes from the ``# xunfang key:`` line; ``name`` supplies it for a
    file without one, and must agree with it otherwise. Like ssh, a file that
    group or others can read or write is refused (:class:`KeyFileInsecure`):
    the key may already have leaked, and silently using it hides that.
    """
    where = os.fspath(path)
    fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # fstat on the open file, not stat on the path: no swapping it in between.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyInvalid(f"{where} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileInsecure(
                where,
                f"{where}: private key file is open to group or others (mode {mode:04o}); "
                f"refusing to use it. If it has not leaked, run: chmod 600 {where}",
            )
        chunks: list[bytes] = []
        size = 0
        while size <= _KEY_FILE_MAX:
            chunk = os.read(fd, _KEY_FILE_MAX + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > _KEY_FILE_MAX:
        raise KeyInvalid(f"{where} is larger than {_KEY_FILE_MAX} bytes: not a key file")
    return parse_key_file(data, where, name)
