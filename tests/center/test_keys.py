"""``xunfang keys new`` and ``keys show``, driven through argparse as the main CLI will."""

from __future__ import annotations

import argparse
import re
import stat

import pytest

from center import keys
from firmware_py.signing import load_signing_key, public_key_from_b64

LINE_RE = re.compile(r'"(?P<name>[^"]+)" = "(?P<key>[A-Za-z0-9+/=]+)"')


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="xunfang")
    sub = parser.add_subparsers(dest="command")
    keys.add_parser(sub)
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_keys_new_writes_an_owner_only_key_and_prints_a_config_line(tmp_path, capsys) -> None:
    path = tmp_path / "centre-2026.key"
    assert _run("keys", "new", "--name", "centre-2026", "--out", str(path)) == 0
    out, err = capsys.readouterr()
    match = LINE_RE.fullmatch(out.strip())
    assert match, out
    assert match["name"] == "centre-2026"
    public = public_key_from_b64(match["key"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_signing_key(path)
    assert loaded.name == "centre-2026"
    assert loaded.public_key().public_bytes_raw() == public.public_bytes_raw()
    assert "command_keys" in err and "ack_keys" in err


def test_keys_new_output_is_valid_toml_for_the_security_table(tmp_path, capsys) -> None:
    import tomllib

    assert _run("keys", "new", "--name", "ledger-2026", "--out", str(tmp_path / "k")) == 0
    out = capsys.readouterr().out
    table = tomllib.loads("[security.ack_keys]\n" + out)["security"]["ack_keys"]
    assert list(table) == ["ledger-2026"]
    public_key_from_b64(table["ledger-2026"])


def test_keys_new_refuses_to_overwrite(tmp_path, capsys) -> None:
    path = tmp_path / "centre.key"
    assert _run("keys", "new", "--name", "centre-2026", "--out", str(path)) == 0
    before = path.read_bytes()
    capsys.readouterr()
    assert _run("keys", "new", "--name", "centre-2027", "--out", str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err and "refusing to overwrite" in err
    assert path.read_bytes() == before


def test_keys_new_into_a_missing_directory_fails_cleanly(tmp_path, capsys) -> None:
    path = tmp_path / "no" / "such" / "k"
    assert _run("keys", "new", "--name", "centre-2026", "--out", str(path)) == 1
    assert f"cannot write {path}" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bad name", "a/b", "密钥", ""])
def test_keys_new_rejects_a_bad_name_as_a_usage_error(tmp_path, capsys, name: str) -> None:
    with pytest.raises(SystemExit) as info:
        _run("keys", "new", "--name", name, "--out", str(tmp_path / "k"))
    assert info.value.code == 2
    assert "--name" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


def test_keys_show_prints_the_same_line_as_new(tmp_path, capsys) -> None:
    path = tmp_path / "centre.key"
    _run("keys", "new", "--name", "centre-2026", "--out", str(path))
    line = capsys.readouterr().out
    assert _run("keys", "show", str(path)) == 0
    assert capsys.readouterr().out == line


def test_keys_show_refuses_a_world_readable_key(tmp_path, capsys) -> None:
    path = tmp_path / "centre.key"
    _run("keys", "new", "--name", "centre-2026", "--out", str(path))
    capsys.readouterr()
    path.chmod(0o644)
    assert _run("keys", "show", str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "mode 0644" in err and f"chmod 600 {path}" in err


def test_keys_show_of_a_missing_file_fails_cleanly(tmp_path, capsys) -> None:
    assert _run("keys", "show", str(tmp_path / "nope")) == 1
    assert "cannot read" in capsys.readouterr().err


def test_keys_show_name_must_agree_with_the_file(tmp_path, capsys) -> None:
    path = tmp_path / "centre.key"
    _run("keys", "new", "--name", "centre-2026", "--out", str(path))
    capsys.readouterr()
    assert _run("keys", "show", str(path), "--name", "centre-2026") == 0
    assert _run("keys", "show", str(path), "--name", "other") == 1
    assert "holds key 'centre-2026', not 'other'" in capsys.readouterr().err


def test_keys_alone_prints_usage_and_returns_2(capsys) -> None:
    assert _run("keys") == 2
    assert "new, show" in capsys.readouterr().err


def test_add_parser_returns_the_keys_parser() -> None:
    parser = argparse.ArgumentParser(prog="xunfang")
    sub = parser.add_subparsers(dest="command")
    assert keys.add_parser(sub).prog == "xunfang keys"
