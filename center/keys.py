"""``xunfang keys``: make and inspect the centre's signing keys.

The centre (and, with its own key, the ledger that sends acks) signs what it
sends units; units trust public keys listed in their config. ``keys new``
writes a private key file, owner-only and never over an existing file, and
prints the public half as the line to paste into ``[security] command_keys``
(or ``ack_keys`` for the ledger's key). ``keys show`` prints that line again
from a key file.

Only the paste line goes to stdout, so ``xunfang keys new ... >> keys.toml``
and scripts work; guidance goes to stderr.

Example::

    $ xunfang keys new --name centre-2026 --out /etc/xunfang/centre-2026.key
    "centre-2026" = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from firmware_py.exc import SignatureError
from firmware_py.signing import (
    SigningKey,
    key_name_ok,
    load_signing_key,
    save_signing_key,
)

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_parser", "cmd_new", "cmd_show"]


def _key_name(text: str) -> str:
    if not key_name_ok(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 1 to 64 of letters, digits, '.', '_', '-' (e.g. centre-2026)"
        )
    return text


def _fail(message: str) -> int:
    print(f"xunfang keys: {message}", file=sys.stderr)
    return 1


def cmd_new(args: argparse.Namespace) -> int:
    """``keys new --name NAME --out FILE``: 0 on success, 1 if the file could not be made."""
    key = SigningKey.generate(args.name)
    try:
        save_signing_key(key, args.out)
    except SignatureError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"cannot write {args.out}: {err.strerror or err}")
    print(
        f"wrote private key {key.name!r} to {args.out} (mode 0600): keep it on the centre.\n"
        "Add this line to [security] command_keys (or ack_keys, for the ledger's key) "
        "in each unit's config:",
        file=sys.stderr,
    )
    print(key.config_line())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``keys show FILE``: print the key's name and public key as a config line."""
    try:
        key = load_signing_key(args.file, name=args.name)
    except SignatureError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"cannot read {args.file}: {err.strerror or err}")
    print(key.config_line())
    return 0


def add_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Register ``keys`` (with ``new`` and ``show``) on the main CLI's subparsers.

    Every leaf sets ``func``: a callable taking the parsed Namespace and
    returning the exit code.
    """
    keys = subparsers.add_parser(
        "keys",
        help="make and show command-signing keys",
        description="Make and show the Ed25519 keys the centre signs commands and acks with.",
    )
    keys.set_defaults(func=lambda _args: _usage(keys))
    sub = keys.add_subparsers(dest="keys_command", metavar="{new,show}")

    new = sub.add_parser(
        "new",
        help="make a new key file and print its config line",
        description=(
            "Write a new private key to FILE (owner-only, never overwriting) and print "
            '\'"NAME" = "PUBLIC"\' for [security] command_keys or ack_keys.'
        ),
    )
    new.add_argument(
        "--name", required=True, type=_key_name, help="the key's name, e.g. centre-2026"
    )
    new.add_argument("--out", required=True, metavar="FILE", help="private key file to create")
    new.set_defaults(func=cmd_new)

    show = sub.add_parser(
        "show",
        help="print a key file's name and public key",
        description="Print the config line of the public half of a private key file.",
    )
    show.add_argument("file", metavar="FILE", help="private key file")
    show.add_argument(
        "--name",
        type=_key_name,
        default=None,
        help="the key's name, for a PEM file without a '# xunfang key:' line",
    )
    show.set_defaults(func=cmd_show)
    return keys


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: choose a command: new, show", file=sys.stderr)
    return 2
