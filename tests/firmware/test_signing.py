"""Signed envelopes: canonical bytes, sign/verify, every rejection, key files."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import stat
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_py import signing
from firmware_py.clock import ManualClock, parse_rfc3339
from firmware_py.exc import (
    EnvelopeNotCanonical,
    KeyFileExists,
    KeyFileInsecure,
    KeyInvalid,
    SignatureError,
    SignatureInvalid,
    SignatureKeyUnknown,
    SignatureMalformed,
    SignatureMissing,
    XunfangError,
)
from firmware_py.signing import (
    DEFAULT_TTL_S,
    MAX_DEPTH,
    MAX_SAFE_INT,
    SigningKey,
    canonical_bytes,
    canonical_json,
    envelope_id_ok,
    load_signing_key,
    public_key_from_b64,
    save_signing_key,
    verify_envelope,
)

# RFC 8032, section 7.1, test 1: a key anyone can rebuild, so the vector below
# can be checked by another vendor's implementation.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC_B64 = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="

KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(RFC8032_SEED), "centre-2026")
OTHER = SigningKey.generate("ledger-2026")
TRUSTED = {KEY.name: KEY.public_b64()}
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _envelope(**overrides: object) -> dict:
    params: dict = {
        "name": "level",
        "args": {"level": 1, "expires_at": "2026-11-28T19:00:00.000Z"},
        "site": "zhuantang",
        "units": ["*"],
        "issued_at": "2026-11-28T15:04:05.123Z",
        "id": "2b0f5c1e9a7d4f3b8c6e0a1d2f4b6c8e",
    }
    params.update(overrides)
    return KEY.sign_envelope(**params)


def _wire(envelope: dict) -> dict:
    """What a unit parses: the envelope through UTF-8 JSON and back."""
    return json.loads(json.dumps(envelope, ensure_ascii=False).encode("utf-8"))


# -- canonical bytes -------------------------------------------------------


def test_canonical_bytes_sorts_keys_drops_spaces_keeps_utf8_and_leaves_out_sig() -> None:
    envelope = {
        "sig": "ignored",
        "name": "level",
        "args": {"z": [True, None, -7], "note": "转塘 é", "a": {}},
        "id": "x1",
    }
    expected = '{"args":{"a":{},"note":"转塘 é","z":[true,null,-7]},"id":"x1","name":"level"}'
    assert canonical_bytes(envelope) == expected.encode("utf-8")
    # Non-ASCII text is raw UTF-8, not \\u escapes: 转 is E8 BD AC.
    assert b"\xe8\xbd\xac" in canonical_bytes(envelope)
    assert b"\\u" not in canonical_bytes(envelope)


def test_canonical_bytes_escapes_controls_as_rfc8785_does() -> None:
    assert canonical_json({"s": 'a"\\\n\t\x01\x7f\u2028'}) == (
        '{"s":"a\\"\\\\\\n\\t\\u0001\x7f\u2028"}'.encode()
    )


def test_canonical_bytes_leaves_a_sig_inside_args_signed() -> None:
    assert canonical_bytes({"args": {"sig": 1}, "sig": "x"}) == b'{"args":{"sig":1}}'


@pytest.mark.parametrize(
    ("envelope", "path"),
    [
        ({"args": {"level": 1.0}}, "args.level"),
        ({"args": {"cards": [{"badge": "a"}, {"badge": 2.5}]}}, "args.cards[1].badge"),
        ({"args": {"x": float("nan")}}, "args.x"),
        ({"args": {"x": float("inf")}}, "args.x"),
        ({"n": 0.5}, "n"),
    ],
)
def test_floats_are_rejected_naming_their_path(envelope: dict, path: str) -> None:
    with pytest.raises(EnvelopeNotCanonical, match=re.escape(path) + ": float"):
        canonical_bytes(envelope)


def test_non_ascii_key_is_rejected_naming_where() -> None:
    with pytest.raises(EnvelopeNotCanonical, match=r"args: key '级别' is not ASCII"):
        canonical_bytes({"args": {"级别": 1}})


def test_non_string_key_is_rejected() -> None:
    # json.dumps would quietly turn 1 into "1": a receiver would see other content.
    with pytest.raises(EnvelopeNotCanonical, match=r"args: key 1 is a int"):
        canonical_bytes({"args": {1: "a"}})


def test_lone_surrogate_is_rejected_not_a_unicode_crash() -> None:
    parsed = json.loads('{"args": {"s": "\\ud800"}}')
    with pytest.raises(EnvelopeNotCanonical, match=r"args\.s: string holds a lone surrogate"):
        canonical_bytes(parsed)


def test_integers_beyond_double_precision_are_rejected() -> None:
    assert canonical_json([MAX_SAFE_INT, -MAX_SAFE_INT]) == b"[9007199254740991,-9007199254740991]"
    with pytest.raises(EnvelopeNotCanonical, match=r"args\.seq: integer 9007199254740992"):
        canonical_bytes({"args": {"seq": MAX_SAFE_INT + 1}})
    with pytest.raises(EnvelopeNotCanonical, match=r"integer of 16610 bits"):
        canonical_json(-(10**5000))


def test_non_json_types_and_deep_nesting_are_rejected() -> None:
    with pytest.raises(EnvelopeNotCanonical, match=r"args\.b: a bytes has no JSON form"):
        canonical_bytes({"args": {"b": b"x"}})
    deep: list = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(EnvelopeNotCanonical, match="nested deeper"):
        canonical_json(deep)


def test_canonical_errors_are_value_errors_of_the_signature_family() -> None:
    with pytest.raises(ValueError) as info:
        canonical_bytes({"x": 1.5})
    assert isinstance(info.value, SignatureError)
    assert isinstance(info.value, XunfangError)
    assert info.value.reason == "not_canonical"


def test_canonical_bytes_wants_an_object() -> None:
    with pytest.raises(EnvelopeNotCanonical, match="not a list"):
        canonical_bytes([1])  # type: ignore[arg-type]


# -- signing ---------------------------------------------------------------


def test_signed_envelope_has_exactly_the_contract_fields() -> None:
    env = KEY.sign_envelope("level", {"level": 2}, site="zhuantang", units=["zt-pp-03"])
    assert list(env) == [
        "id", "name", "args", "target", "issued_at", "expires_at", "key", "sig",
    ]  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{32}", env["id"])
    assert env["name"] == "level"
    assert env["args"] == {"level": 2}
    assert env["target"] == {"site": "zhuantang", "units": ["zt-pp-03"]}
    assert TIME_RE.fullmatch(env["issued_at"])
    assert TIME_RE.fullmatch(env["expires_at"])
    assert env["key"] == "centre-2026"
    assert len(base64.b64decode(env["sig"], validate=True)) == 64
    ttl = parse_rfc3339(env["expires_at"]) - parse_rfc3339(env["issued_at"])
    assert ttl.total_seconds() == DEFAULT_TTL_S


def test_fresh_ids_differ() -> None:
    ids = {KEY.sign_envelope("rebirth", {}, site="zhuantang", units=["*"])["id"] for _ in range(50)}
    assert len(ids) == 50


def test_signature_covers_exactly_the_hand_written_canonical_bytes() -> None:
    env = _envelope(args={"level": 1, "note": "转塘"}, ttl_s=60)
    hand = (
        '{"args":{"level":1,"note":"转塘"},"expires_at":"2026-11-28T15:05:05.123Z",'
        '"id":"2b0f5c1e9a7d4f3b8c6e0a1d2f4b6c8e","issued_at":"2026-11-28T15:04:05.123Z",'
        '"key":"centre-2026","name":"level","target":{"site":"zhuantang","units":["*"]}}'
    ).encode()
    assert canonical_bytes(env) == hand
    # Checked with the public key alone, not through verify_envelope.
    public_key_from_b64(RFC8032_PUBLIC_B64).verify(base64.b64decode(env["sig"]), hand)


def test_known_vector_for_other_implementations() -> None:
    # Ed25519 is deterministic, so this pins the whole wire form for the RFC 8032
    # key. The signature was also made with `openssl pkeyutl -sign -rawin` over
    # the hand-written bytes below.
    env = _envelope()
    assert KEY.public_b64() == RFC8032_PUBLIC_B64
    assert canonical_bytes(env) == (
        b'{"args":{"expires_at":"2026-11-28T19:00:00.000Z","level":1},'
        b'"expires_at":"2026-11-28T15:09:05.123Z","id":"2b0f5c1e9a7d4f3b8c6e0a1d2f4b6c8e",'
        b'"issued_at":"2026-11-28T15:04:05.123Z","key":"centre-2026","name":"level",'
        b'"target":{"site":"zhuantang","units":["*"]}}'
    )
    assert env["sig"] == (
        "3+U4vrc8S7/e2YXuqq8wZ26VVSjxJN1flomTA3X5viqLpXOcS9hIGpxYxXECkak4/bFSewQPaNPYKTSCQlYFCA=="
    )


def test_times_come_from_the_clock_and_keep_milliseconds() -> None:
    clock = ManualClock(wall_ms=1_795_000_000_007)
    env = KEY.sign_envelope("snapshot", {}, site="zhuantang", units=["*"], ttl_s=5, clock=clock)
    assert env["issued_at"] == "2026-11-18T11:06:40.007Z"
    assert env["expires_at"] == "2026-11-18T11:06:45.007Z"


def test_times_given_in_other_forms_are_rewritten_in_the_contract_form() -> None:
    env = _envelope(
        issued_at="2026-11-28T23:04:05+08:00",
        expires_at=datetime(2026, 11, 28, 16, 0, 0, 250_999, tzinfo=UTC),
    )
    assert env["issued_at"] == "2026-11-28T15:04:05.000Z"
    assert env["expires_at"] == "2026-11-28T16:00:00.250Z"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"args": {"level": 1.5}}, r"args\.level: float"),
        ({"args": [1]}, "args must be a JSON object"),
        ({"units": "zt-pp-03"}, "non-empty list"),
        ({"units": []}, "non-empty list"),
        ({"units": ["ZT PP"]}, "target unit"),
        ({"site": "Zhuan.Tang"}, "target site"),
        ({"name": ""}, "message name"),
        ({"id": "not ok!"}, "envelope id"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": 1.5}, "ttl_s"),
        ({"ttl_s": 10, "expires_at": "2026-11-28T16:00:00.000Z"}, "not both"),
        ({"expires_at": "2026-11-28T15:04:05.123Z"}, "not after"),
        ({"issued_at": "yesterday"}, "issued_at"),
        ({"issued_at": datetime(2026, 1, 1)}, "no zone"),
    ],
)
def test_caller_mistakes_raise_at_once(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _envelope(**overrides)


def test_args_are_copied_so_later_changes_cannot_alter_what_was_signed() -> None:
    args = {"cards": [{"card": "14008EC793"}]}
    env = _envelope(args=args)
    args["cards"][0]["card"] = "FFFFFFFFFF"
    verify_envelope(env, TRUSTED)
    assert env["args"]["cards"][0]["card"] == "14008EC793"


def test_repr_shows_no_private_key() -> None:
    text = repr(KEY)
    assert "centre-2026" in text and RFC8032_PUBLIC_B64 in text
    assert RFC8032_SEED.hex() not in text
    assert base64.b64encode(RFC8032_SEED).decode() not in text


# -- verifying -------------------------------------------------------------


def test_round_trip_over_the_wire_verifies() -> None:
    verify_envelope(_wire(_envelope()), TRUSTED)
    verify_envelope(_wire(_envelope()), {KEY.name: KEY.public_key()})


def test_missing_sig_is_its_own_error() -> None:
    env = _envelope()
    del env["sig"]
    with pytest.raises(SignatureMissing, match="has no sig") as info:
        verify_envelope(env, TRUSTED)
    assert info.value.reason == "missing_signature"
    with pytest.raises(SignatureMissing):
        verify_envelope({**_envelope(), "sig": ""}, TRUSTED)
    with pytest.raises(SignatureMissing, match="not a JSON object"):
        verify_envelope([1, 2], TRUSTED)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sig",
    [
        "not base64!",
        base64.b64encode(b"x" * 64).decode().rstrip("="),  # padding removed
        base64.urlsafe_b64encode(b"\xfb" * 64).decode(),  # the URL-safe alphabet
        base64.b64encode(b"x" * 63).decode(),
        base64.b64encode(b"x" * 65).decode(),
        12345,
        "签名",
    ],
)
def test_malformed_sig_is_its_own_error(sig: object) -> None:
    with pytest.raises(SignatureMalformed) as info:
        verify_envelope({**_envelope(), "sig": sig}, TRUSTED)
    assert info.value.reason == "malformed_signature"


def test_non_canonical_base64_spelling_of_a_good_sig_is_malformed() -> None:
    env = _envelope()
    # 64 bytes leave 2 spare bits in the last character; set one.
    last = env["sig"][-3]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = env["sig"][:-3] + alphabet[alphabet.index(last) | 1] + "=="
    assert base64.b64decode(twin) == base64.b64decode(env["sig"])
    with pytest.raises(SignatureMalformed):
        verify_envelope({**env, "sig": twin}, TRUSTED)


def test_unknown_key_is_its_own_error_and_names_the_key() -> None:
    env = OTHER.sign_envelope("ack", {"journal": "5f1c9a0e7d2b4c11", "seq": 3},
                              site="zhuantang", units=["zt-pp-03"])  # fmt: skip
    with pytest.raises(SignatureKeyUnknown, match="'ledger-2026', not trusted") as info:
        verify_envelope(env, TRUSTED)
    assert info.value.reason == "unknown_key"
    no_key = _envelope()
    del no_key["key"]
    with pytest.raises(SignatureKeyUnknown, match="names no key"):
        verify_envelope(no_key, TRUSTED)
    with pytest.raises(SignatureKeyUnknown, match=r"trusted: none"):
        verify_envelope(_envelope(), {})


def test_a_command_key_signature_is_not_an_ack_key_signature() -> None:
    # The unit passes only ack_keys when it checks an ack: the centre's key is unknown there.
    ack = KEY.sign_envelope("ack", {"journal": "5f1c9a0e7d2b4c11", "seq": 3},
                            site="zhuantang", units=["zt-pp-03"])  # fmt: skip
    with pytest.raises(SignatureKeyUnknown):
        verify_envelope(ack, {OTHER.name: OTHER.public_b64()})


@pytest.mark.parametrize(
    "tamper",
    [
        lambda e: e["args"].__setitem__("level", 3),
        lambda e: e["args"].__setitem__("extra", True),
        lambda e: e["args"].pop("expires_at"),
        lambda e: e["target"].__setitem__("site", "xihu"),
        lambda e: e["target"].__setitem__("units", ["zt-pp-03"]),
        lambda e: e.__setitem__("expires_at", "2027-11-28T15:09:05.123Z"),
        lambda e: e.__setitem__("issued_at", "2026-11-28T15:04:05.124Z"),
        lambda e: e.__setitem__("id", "2b0f5c1e9a7d4f3b8c6e0a1d2f4b6c8f"),
        lambda e: e.__setitem__("name", "lights"),
        lambda e: e.pop("expires_at"),
        lambda e: e.__setitem__("extra", 1),
    ],
    ids=[
        "args-value", "args-added", "args-removed", "target-site", "target-units",
        "expires_at", "issued_at", "id", "name", "expires_at-removed", "field-added",
    ],
)  # fmt: skip
def test_tampering_with_any_field_breaks_the_signature(tamper) -> None:
    env = _wire(_envelope())
    tamper(env)
    with pytest.raises(SignatureInvalid, match="does not verify under key 'centre-2026'") as info:
        verify_envelope(env, TRUSTED)
    assert info.value.reason == "bad_signature"


def test_renaming_the_key_to_another_trusted_key_breaks_the_signature() -> None:
    env = _envelope()
    env["key"] = OTHER.name
    with pytest.raises(SignatureInvalid):
        verify_envelope(env, {**TRUSTED, OTHER.name: OTHER.public_b64()})


def test_every_rejection_is_a_signature_error_and_a_value_error() -> None:
    for cls in (SignatureMissing, SignatureMalformed, SignatureKeyUnknown, SignatureInvalid):
        assert issubclass(cls, SignatureError) and issubclass(cls, ValueError)


def test_a_broken_trusted_key_is_reported_as_a_config_problem() -> None:
    with pytest.raises(KeyInvalid, match="trusted key 'centre-2026'"):
        verify_envelope(_envelope(), {"centre-2026": "AAAA"})


def test_envelope_id_ok() -> None:
    assert envelope_id_ok("2b0f5c1e9a7d4f3b8c6e0a1d2f4b6c8e")
    assert envelope_id_ok("a") and envelope_id_ok("A_b-9") and envelope_id_ok("x" * 64)
    for bad in ("", "x" * 65, "a b", "a.b", "a\n", "é", None, 12):
        assert not envelope_id_ok(bad), bad


# -- properties ------------------------------------------------------------

_ascii_keys = st.text(alphabet=st.characters(max_codepoint=127), max_size=8)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ascii_keys, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(args=st.dictionaries(_ascii_keys, _json_values, max_size=5))
def test_any_float_free_json_round_trips_sign_then_verify(args: dict) -> None:
    env = KEY.sign_envelope("x", args, site="s", units=["*"], issued_at="2026-01-01T00:00:00Z")
    assert env["args"] == args
    verify_envelope(_wire(env), TRUSTED)


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, 63), flip=st.integers(1, 255))
def test_flipping_any_signature_byte_fails(index: int, flip: int) -> None:
    env = _envelope()
    raw = bytearray(base64.b64decode(env["sig"]))
    raw[index] ^= flip
    env["sig"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SignatureInvalid):
        verify_envelope(env, TRUSTED)


@settings(max_examples=100, deadline=None)
@given(value=_json_values)
def test_canonical_form_is_stable_through_the_wire(value: object) -> None:
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once


# -- public keys -----------------------------------------------------------


def test_public_key_from_b64_accepts_the_config_form() -> None:
    key = public_key_from_b64(RFC8032_PUBLIC_B64)
    assert key.public_bytes_raw() == bytes.fromhex(
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert public_key_from_b64(f"  {RFC8032_PUBLIC_B64}\n").public_bytes_raw() == (
        key.public_bytes_raw()
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not base64!", "not standard base64"),
        (RFC8032_PUBLIC_B64.rstrip("="), "not standard base64"),
        ("公钥", "not standard base64"),
        (base64.b64encode(b"k" * 31).decode(), "is 31 bytes; an Ed25519 public key is 32"),
        (base64.b64encode(b"k" * 64).decode(), "is 64 bytes"),
        ("", "is 0 bytes"),
        ("AAAA AAAA", "not standard base64"),
        (None, "must be a base64 string"),
    ],
)
def test_public_key_from_b64_says_what_is_wrong(text: object, match: str) -> None:
    with pytest.raises(KeyInvalid, match=match) as info:
        public_key_from_b64(text)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


# -- key files -------------------------------------------------------------


def test_saved_key_is_owner_only_and_loads_back_with_its_name(tmp_path) -> None:
    path = tmp_path / "centre.key"
    save_signing_key(KEY, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("# xunfang key: centre-2026\n-----BEGIN PRIVATE KEY-----\n")
    loaded = load_signing_key(path)
    assert loaded.name == "centre-2026"
    assert loaded.public_b64() == RFC8032_PUBLIC_B64
    verify_envelope(loaded.sign_envelope("rebirth", {}, site="s", units=["*"]), TRUSTED)


def test_key_file_is_plain_pem_to_other_tools(tmp_path) -> None:
    path = tmp_path / "centre.key"
    save_signing_key(KEY, path)
    other = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(other, Ed25519PrivateKey)
    assert other.public_key().public_bytes_raw() == KEY.public_key().public_bytes_raw()


def test_key_file_is_created_0600_by_open_itself_whatever_the_umask(tmp_path, monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        calls.append((flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(signing.os, "open", spy)
    old = os.umask(0)
    try:
        save_signing_key(KEY, tmp_path / "k")
    finally:
        os.umask(old)
    flags, mode = calls[0]
    assert flags & os.O_CREAT and flags & os.O_EXCL
    assert mode == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_saving_refuses_to_overwrite(tmp_path) -> None:
    path = tmp_path / "centre.key"
    path.write_text("precious")
    with pytest.raises(KeyFileExists, match="refusing to overwrite") as info:
        save_signing_key(KEY, path)
    assert isinstance(info.value, FileExistsError)
    assert path.read_text() == "precious"


def test_saving_refuses_to_follow_a_symlink(tmp_path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "centre.key").symlink_to(target)
    with pytest.raises(KeyFileExists):
        save_signing_key(KEY, tmp_path / "centre.key")
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_loading_refuses_a_key_file_open_to_group_or_others(tmp_path, mode: int) -> None:
    path = tmp_path / "centre.key"
    save_signing_key(KEY, path)
    path.chmod(mode)
    with pytest.raises(KeyFileInsecure, match=f"mode {mode:04o}.*chmod 600") as info:
        load_signing_key(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, PermissionError)


def test_loading_accepts_a_read_only_key_file(tmp_path) -> None:
    path = tmp_path / "centre.key"
    save_signing_key(KEY, path)
    path.chmod(0o400)
    assert load_signing_key(path).name == "centre-2026"


def _write_private(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_a_pem_file_without_name_line_needs_a_name(tmp_path) -> None:
    path = tmp_path / "openssl.key"
    _write_private(path, _pem(Ed25519PrivateKey.from_private_bytes(RFC8032_SEED)))
    with pytest.raises(KeyInvalid, match="no '# xunfang key: NAME' line"):
        load_signing_key(path)
    assert load_signing_key(path, name="centre-2026").public_b64() == RFC8032_PUBLIC_B64


def test_a_name_that_disagrees_with_the_file_is_refused(tmp_path) -> None:
    path = tmp_path / "centre.key"
    save_signing_key(KEY, path)
    assert load_signing_key(path, name="centre-2026").name == "centre-2026"
    with pytest.raises(KeyInvalid, match="holds key 'centre-2026', not 'centre-2027'"):
        load_signing_key(path, name="centre-2027")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"# xunfang key: k\nhello\n", "not a PEM private key"),
        (b"\xff\xfe", "not text"),
        (b"# xunfang key: bad name!\n", "not a key name"),
    ],
)
def test_loading_garbage_says_so(tmp_path, data: bytes, match: str) -> None:
    path = tmp_path / "k"
    _write_private(path, data)
    with pytest.raises(KeyInvalid, match=match):
        load_signing_key(path)


def test_loading_a_non_ed25519_or_encrypted_key_says_so(tmp_path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    _write_private(tmp_path / "ec", b"# xunfang key: k\n" + _pem(ec_key))
    with pytest.raises(KeyInvalid, match="not an Ed25519 key"):
        load_signing_key(tmp_path / "ec")
    encrypted = KEY.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    _write_private(tmp_path / "enc", b"# xunfang key: k\n" + encrypted)
    with pytest.raises(KeyInvalid, match="encrypted"):
        load_signing_key(tmp_path / "enc")


def test_loading_a_missing_file_is_an_os_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_signing_key(tmp_path / "nope")


def test_key_names_are_checked() -> None:
    for bad in ("", "a b", "a/b", "é", "a\n", "x" * 65):
        with pytest.raises(KeyInvalid):
            SigningKey.generate(bad)


def test_signed_envelope_is_not_changed_by_verifying_it() -> None:
    env = _envelope()
    before = copy.deepcopy(env)
    verify_envelope(env, TRUSTED)
    assert env == before


def test_public_key_spelled_with_spare_bits_set_is_accepted_as_config_does() -> None:
    # 32 bytes leave 2 spare bits; config's check accepts either spelling, so must we.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = RFC8032_PUBLIC_B64[-2]
    twin = RFC8032_PUBLIC_B64[:-2] + alphabet[alphabet.index(last) | 1] + "="
    assert twin != RFC8032_PUBLIC_B64
    assert public_key_from_b64(twin).public_bytes_raw() == KEY.public_key().public_bytes_raw()
