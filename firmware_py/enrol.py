"""``xunfang enrol``: make the unit's broker key and a certificate request (CSR).

Run on the unit. The private key is made here and stays here: it is written
owner-only (0600) where the config's ``[mqtt] tls.key`` points, and is never
printed or sent. The CSR (CN = unit id, the site as the SAN URI
``urn:xunfang:site:SITE``) is written next to ``tls.cert`` as ``.csr`` and its
path printed; take it to the district's CA (``xunfang ca sign``), and bring
back the certificate to ``tls.cert``.

Renewal is the same command: a unit that has a key already keeps it and
makes a new CSR for it, so the running uplink's key and certificate still
match until the new certificate is copied in.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import load_config
from .exc import ConfigError, XunfangError
from .i18n import Translate, choose_language, translator

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["SITE_URN", "add_parser", "make_request"]

SITE_URN = "urn:xunfang:site:"
#: The daemons' user: when root enrols, the key is given to it (the uplink reads it).
DAEMON_USER = "xunfang"


class EnrolError(XunfangError):
    """The unit cannot make its key or request; the message says what to fix."""


def _load_or_make_key(path: Path, owner: str | None,
                      _: Translate) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The key at ``path`` (kept), or a new P-256 key written there 0600."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise EnrolError(_("{path} can be read by group or others: chmod 600 {path}")
                             .format(path=path))
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as err:
            raise EnrolError(_("{path} is not an unencrypted PEM private key: {error}")
                             .format(path=path, error=err)) from err
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
                key.curve, ec.SECP256R1):
            raise EnrolError(_("{path} is not an ECDSA P-256 key; move it away to make a new "
                               "one").format(path=path))
        return key, False
    if not path.parent.is_dir():
        raise EnrolError(_("no directory {dir} for the key ([mqtt] tls.key)")
                         .format(dir=path.parent))
    key = ec.generate_private_key(ec.SECP256R1())
    data = key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if owner is not None:
            user = pwd.getpwnam(owner)
            os.fchown(fd, user.pw_uid, user.pw_gid)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.close(fd)
    return key, True


def make_request(key: ec.EllipticCurvePrivateKey, unit: str, site: str) -> bytes:
    """A PEM CSR with CN = ``unit`` and the site as a SAN URI, signed by ``key``."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site),
            x509.NameAttribute(NameOID.COMMON_NAME, unit),
        ]))
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"{SITE_URN}{site}")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _default_owner() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(DAEMON_USER)
    except KeyError:
        return None
    return DAEMON_USER


def cmd_enrol(args: argparse.Namespace) -> int:
    _ = translator(choose_language(args.lang))
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    tls = cfg.mqtt.tls
    if tls is None or tls.key is None or tls.cert is None:
        example = (f'tls = {{ ca = "tls/ca.crt", cert = "tls/{cfg.unit.id}.crt", '
                   f'key = "tls/{cfg.unit.id}.key" }}')
        print(_("{config}: [mqtt] tls needs ca, cert and key paths, e.g. {example}")
              .format(config=args.config, example=example), file=sys.stderr)
        return 2
    csr_path = Path(args.out) if args.out else tls.cert.with_suffix(".csr")
    try:
        key, made = _load_or_make_key(tls.key, args.owner or _default_owner(), _)
        csr = make_request(key, cfg.unit.id, cfg.unit.site)
        tmp = csr_path.with_name(f".{csr_path.name}.tmp")
        tmp.write_bytes(csr)
        os.chmod(tmp, 0o644)
        os.replace(tmp, csr_path)
    except EnrolError as err:
        print(f"xunfang enrol: {err}", file=sys.stderr)
        return 1
    except KeyError:
        print("xunfang enrol: " + _("no such user: {user}").format(user=args.owner),
              file=sys.stderr)
        return 1
    except OSError as err:
        print("xunfang enrol: " + _("cannot write {file}: {error}").format(
            file=err.filename, error=err.strerror or err), file=sys.stderr)
        return 1
    what = (_("made a new key at {key}") if made else _("kept the existing key at {key}"))
    print(what.format(key=tls.key), file=sys.stderr)
    print(_("The key (0600) never leaves the unit. Take the request to the CA: xunfang ca "
            "sign --dir CA_DIR {csr} --site {site}; then copy the certificate to {cert} and "
            "the CA's ca.crt to {ca}.").format(csr=csr_path.name, site=cfg.unit.site,
                                               cert=tls.cert, ca=tls.ca), file=sys.stderr)
    print(csr_path)
    return 0


def add_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "enrol", help="make the unit's broker key and a certificate request",
        description="Make the unit's private key (kept if there is one) where [mqtt] tls.key "
                    "points and a certificate request for the CA; print the request's path.")
    p.add_argument("-c", "--config", required=True, metavar="FILE",
                   help="unit config (TOML), e.g. /etc/xunfang/unit.toml")
    p.add_argument("--out", metavar="FILE", help="request file (default: tls.cert with .csr)")
    p.add_argument("--lang", choices=("zh", "en"),
                   help="language of the messages (default: Chinese, or the locale's)")
    p.add_argument("--owner", metavar="USER",
                   help=f"owner of a new key (default {DAEMON_USER} when run as root)")
    p.set_defaults(func=cmd_enrol)
    return p
