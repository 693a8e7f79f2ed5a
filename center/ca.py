"""``xunfang ca``: the district's certificate authority for units' broker certificates.

A unit proves who it is to the broker with a client certificate whose CN is
its unit id (the broker takes the CN as the MQTT username, and the ACL,
rendered from the inventory, keys on it: ``docs/broker.md``). This command
keeps that CA in one directory, on an offline machine:

    ca.key        the CA's private key (0600; never leaves this directory)
    ca.crt        the CA certificate: copied to the broker and to every unit
    index.json    every certificate issued: unit, site, serial, expiry, revoked
    crl.pem       the revocation list the broker checks (``crlfile``)
    issued/       a copy of every certificate issued, by serial

``ca sign`` takes a unit's CSR (``xunfang enrol`` makes it on the unit, so the
unit's key never travels), checks the unit id and its site, issues the
certificate and adds the unit to the inventory; ``ca revoke`` revokes it,
writes a new CRL and takes the unit out of the inventory. Render the ACL and
reload the broker after either (``config/mosquitto/README``).

Keys are ECDSA P-256 (see ``docs/broker.md``, "The district CA", for why not
Ed25519).

What the command prints goes through the gettext domain ``ca``
(``center/locale``): Chinese by default, English with ``--lang en``. After
editing a message::

    pybabel extract --no-location --sort-output -k _ -k N_ -k CaError \
        -o center/locale/ca.pot center/ca.py
    pybabel update -D ca -i center/locale/ca.pot -d center/locale
    pybabel compile -D ca -d center/locale      # the .mo is committed
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import sys
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from center.i18n import DEFAULT_LANGUAGE, LANGUAGES, Catalogue
from center.inventory import RESERVED, InventoryError, load_inventory
from firmware_py import topics
from firmware_py.enrol import SITE_URN
from firmware_py.exc import XunfangError

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["CaError", "CertificateAuthority", "Issued", "add_parser", "site_of", "site_uri",
           "use_language"]

CA_DAYS = 3650
UNIT_DAYS = 825
MAX_UNIT_DAYS = 3650
CRL_DAYS = 30
# A little slack for a unit or broker whose clock is behind the CA machine's.
BACKDATE = dt.timedelta(hours=1)


# -- messages ------------------------------------------------------------------------------

DOMAIN = "ca"
_catalogue = Catalogue(DOMAIN)
use_language = _catalogue.use
LOCALE_DIR = _catalogue.locale_dir


def _(message: str) -> str:
    return _catalogue.gettext(message)


def N_(message: str) -> str:
    """Mark a message for the catalogue; translated where it is shown."""
    return message




class CaError(XunfangError, ValueError):
    """The CA directory, a CSR or a request cannot be used; the message says why.

    ``str()`` is the English text (logs, scripts); :meth:`translated` is what the
    command prints, in the language chosen with ``--lang``.
    """

    def __init__(self, message: str, **params: object) -> None:
        super().__init__(message.format(**params))
        self.message = message
        self.params = params

    def translated(self) -> str:
        return _(self.message).format(**self.params)


def site_uri(site: str) -> str:
    """The SAN URI that carries a unit's site in its CSR and certificate."""
    return f"{SITE_URN}{site}"


def site_of(obj: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    """The site named in a certificate's or CSR's ``urn:xunfang:site:`` SAN URI, if any."""
    try:
        san = obj.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    sites = [u[len(SITE_URN):] for u in san.get_values_for_type(x509.UniformResourceIdentifier)
             if u.startswith(SITE_URN)]
    return sites[0] if len(sites) == 1 else None


def common_name(obj: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    names = obj.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write-then-rename: a broker reloading (or a crash) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create_private(path: Path, data: bytes) -> None:
    """A new 0600 file; never over an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


@dataclass(frozen=True)
class Issued:
    """One certificate in the CA's index."""

    unit: str
    site: str
    serial: str          # hex
    not_after: str
    issued_at: str
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: dt.datetime) -> bool:
        return dt.datetime.fromisoformat(self.not_after) <= now


class CertificateAuthority:
    """The CA kept in ``directory`` (see the module docstring for its files)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.key_path = self.directory / "ca.key"
        self.cert_path = self.directory / "ca.crt"
        self.index_path = self.directory / "index.json"
        self.crl_path = self.directory / "crl.pem"
        self.issued_dir = self.directory / "issued"
        self.default_inventory = self.directory / "units.txt"

    # -- creating ----------------------------------------------------------------------

    @classmethod
    def init(cls, directory: str | os.PathLike[str], district: str,
             days: int = CA_DAYS) -> CertificateAuthority:
        """Make a new CA (refuses a directory that already holds one)."""
        ca = cls(directory)
        if not district.strip():
            raise CaError("--district must name the district, e.g. 'Xihu district'")
        if ca.key_path.exists() or ca.index_path.exists():
            raise CaError("{directory} already holds a CA: nothing changed",
                          directory=ca.directory)
        ca.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(ca.directory, 0o700)
        ca.issued_dir.mkdir(mode=0o700, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, district.strip()),
            x509.NameAttribute(NameOID.COMMON_NAME, f"xunfang CA {district.strip()}"),
        ])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        _create_private(ca.key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write_atomic(ca.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        ca._save_index({"district": district.strip(), "certificates": []})
        ca.write_crl()
        return ca

    # -- loading -----------------------------------------------------------------------

    def _check(self) -> None:
        for path in (self.key_path, self.cert_path, self.index_path):
            if not path.is_file():
                raise CaError("{directory} is not a CA directory: no {file} "
                              "(make one with `xunfang ca init`)",
                              directory=self.directory, file=path.name)
        if os.stat(self.key_path).st_mode & 0o077:
            raise CaError("{key} can be read by group or others: chmod 600 {key}",
                          key=self.key_path)

    def certificate(self) -> x509.Certificate:
        self._check()
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def _key(self) -> ec.EllipticCurvePrivateKey:
        self._check()
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError("{key} is not an ECDSA key", key=self.key_path)
        return key

    def _load_index(self) -> dict[str, Any]:
        self._check()
        try:
            doc = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CaError("cannot read {file}: {error}", file=self.index_path,
                          error=err) from err
        if not isinstance(doc, dict) or not isinstance(doc.get("certificates"), list):
            raise CaError("{file} is not a xunfang CA index", file=self.index_path)
        return doc

    def _save_index(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, ensure_ascii=False, indent=1).encode() + b"\n"
        _write_atomic(self.index_path, data, 0o600)

    def issued(self) -> list[Issued]:
        """Every certificate the CA issued, oldest first."""
        return [Issued(**entry) for entry in self._load_index()["certificates"]]

    @property
    def district(self) -> str:
        return str(self._load_index().get("district", ""))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change to the CA at a time (two operators, or a script run twice)."""
        self._check()
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- signing, revoking ---------------------------------------------------------------

    def sign(self, csr_pem: bytes, site: str, days: int = UNIT_DAYS,
             inventory: Path | None = None) -> tuple[x509.Certificate, Issued]:
        """Issue a unit certificate for a CSR; record it and list the unit in the inventory."""
        if not topics.NAME_RE.match(site):
            raise CaError("site {site!r} does not match [a-z0-9-]{{1,32}}", site=site)
        if not 1 <= days <= MAX_UNIT_DAYS:
            raise CaError("--days must be between 1 and {most}, got {days}",
                          most=MAX_UNIT_DAYS, days=days)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise CaError("not a PEM certificate request: {error}", error=err) from err
        if not csr.is_signature_valid:
            raise CaError("the request's signature does not verify (damaged or altered)")
        unit = common_name(csr)
        if unit is None or not topics.NAME_RE.match(unit):
            raise CaError("the request's CN {unit!r} is not a unit id ([a-z0-9-]{{1,32}})",
                          unit=unit)
        if unit in RESERVED:
            raise CaError("{unit!r} is reserved for the centre's tools, not a unit id",
                          unit=unit)
        asked = site_of(csr)
        if asked is not None and asked != site:
            raise CaError("the request of {unit} names site {asked!r}, not {site!r}",
                          unit=unit, asked=asked, site=site)
        public = csr.public_key()
        if not (isinstance(public, ec.EllipticCurvePublicKey)
                and isinstance(public.curve, ec.SECP256R1)):
            raise CaError("the request of {unit} has a {kind} key; "
                          "units use ECDSA P-256 (xunfang enrol makes one)",
                          unit=unit, kind=type(public).__name__)
        inventory = inventory or self.default_inventory
        with self._locked():
            doc = self._load_index()
            others = {e["site"] for e in doc["certificates"]
                      if e["unit"] == unit and e["revoked_at"] is None and e["site"] != site}
            if others:
                raise CaError("unit id {unit} is already issued to site {site}: "
                              "unit ids are unique across the fleet (revoke it first to move "
                              "the unit)", unit=unit, site=sorted(others)[0])
            listed = _inventory_units(inventory)
            if listed.get(unit, site) != site:
                raise CaError("{inventory} lists {unit} for site {listed}, not {site}",
                              inventory=inventory, unit=unit, listed=listed[unit], site=site)
            key = self._key()
            ca_cert = self.certificate()
            now = _now()
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, doc.get("district") or "xunfang"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site),
                    x509.NameAttribute(NameOID.COMMON_NAME, unit),
                ]))
                .issuer_name(ca_cert.subject)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE)
                .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(cert_sign=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(site_uri(site))]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    key.public_key()), critical=False)
                .sign(key, hashes.SHA256())
            )
            entry = Issued(unit=unit, site=site, serial=f"{cert.serial_number:x}",
                           not_after=_iso(cert.not_valid_after_utc), issued_at=_iso(now))
            self.issued_dir.mkdir(mode=0o700, exist_ok=True)
            _write_atomic(self.issued_dir / f"{entry.serial}.crt",
                          cert.public_bytes(serialization.Encoding.PEM), 0o644)
            doc["certificates"].append(entry.__dict__)
            self._save_index(doc)
            if unit not in listed:
                _inventory_add(inventory, unit, site)
        return cert, entry

    def revoke(self, unit: str, inventory: Path | None = None) -> list[Issued]:
        """Revoke every valid certificate of ``unit``, write the CRL, drop it from the inventory."""
        inventory = inventory or self.default_inventory
        with self._locked():
            doc = self._load_index()
            now = _iso(_now())
            revoked = []
            for entry in doc["certificates"]:
                if entry["unit"] == unit and entry["revoked_at"] is None:
                    entry["revoked_at"] = now
                    revoked.append(Issued(**entry))
            if not revoked and not any(e["unit"] == unit for e in doc["certificates"]):
                raise CaError("this CA never issued a certificate to {unit!r}", unit=unit)
            self._save_index(doc)
            self.write_crl()
            _inventory_remove(inventory, unit)
        return revoked

    def write_crl(self, days: int = CRL_DAYS) -> Path:
        """Write ``crl.pem`` listing every revoked certificate, valid for ``days``."""
        key = self._key()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate().subject)
            .last_update(now - BACKDATE)
            .next_update(now + dt.timedelta(days=days))
        )
        for entry in self.issued():
            if entry.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(entry.serial, 16))
                    .revocation_date(dt.datetime.fromisoformat(entry.revoked_at))
                    .build())
        crl = builder.sign(key, hashes.SHA256())
        _write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
        return self.crl_path

    def server(self, names: list[str], out_dir: Path, days: int = UNIT_DAYS) -> tuple[Path, Path]:
        """The broker's key and server certificate for ``names`` (DNS names or IP addresses)."""
        if not names:
            raise CaError("give the broker's names and addresses, e.g. mqtt.centre.example")
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        out_dir.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = out_dir / "server.key", out_dir / "server.crt"
        with self._locked():
            ca_key, ca_cert = self._key(), self.certificate()
            key = ec.generate_private_key(ec.SECP256R1())
            now = _now()
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(ca_cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE)
                .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(cert_sign=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            _create_private(key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return key_path, cert_path


# -- the inventory file (the same one render-acl.py and the ledger read) ----------------


def _inventory_units(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        return load_inventory(path)
    except InventoryError as err:
        raise CaError("the inventory cannot be used: {error}", error=err) from err


def _inventory_add(path: Path, unit: str, site: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else (
        "# unit id      site   (written by xunfang ca sign; render-acl.py and the ledger "
        "read it)\n")
    if text and not text.endswith("\n"):
        text += "\n"
    _write_atomic(path, f"{text}{unit} {site}\n".encode(), 0o644)


def _inventory_remove(path: Path, unit: str) -> None:
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines
            if line.split("#", 1)[0].replace(",", " ").split()[:1] != [unit]]
    if kept != lines:
        _write_atomic(path, "".join(kept).encode(), 0o644)


# -- the command line ---------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"xunfang ca: {message}", file=sys.stderr)
    return 1


def _failed(err: CaError | OSError) -> int:
    """Say why a command stopped, in the chosen language."""
    if isinstance(err, CaError):
        return _fail(err.translated())
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        return _fail(_("no such file or directory: {file}").format(file=err.filename))
    if isinstance(err, PermissionError) and err.filename is not None:
        return _fail(_("not allowed to read or write {file} (run as the CA's owner)").format(
            file=err.filename))
    if err.filename is not None:
        return _fail(_("cannot use {file}: {error}").format(
            file=err.filename, error=err.strerror or err))
    return _fail(str(err))


def _inventory_arg(args: argparse.Namespace) -> Path | None:
    return Path(args.inventory) if args.inventory else None


def cmd_init(args: argparse.Namespace) -> int:
    use_language(args.lang)
    try:
        ca = CertificateAuthority.init(args.dir, args.district, days=args.days)
    except (CaError, OSError) as err:
        return _failed(err)
    print(_("made the CA of {district} in {directory}: {cert} goes to the broker and every "
            "unit; {key} (0600) never leaves this machine; {crl} is the broker's crlfile").format(
        district=args.district, directory=ca.directory, cert=ca.cert_path, key=ca.key_path,
        crl=ca.crl_path), file=sys.stderr)
    print(ca.cert_path)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    use_language(args.lang)
    ca = CertificateAuthority(args.dir)
    csr_path = Path(args.csr)
    try:
        csr = csr_path.read_bytes()
        cert, entry = ca.sign(csr, args.site, days=args.days, inventory=_inventory_arg(args))
        out = Path(args.out) if args.out else csr_path.with_name(f"{entry.unit}.crt")
        _write_atomic(out, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except CaError as err:
        return _fail(f"{csr_path}: {err.translated()}")
    except OSError as err:
        return _failed(err)
    inventory = _inventory_arg(args) or ca.default_inventory
    print(_("issued {unit} of site {site}, serial {serial}, valid until {not_after}; listed in "
            "{inventory}. Copy {cert} and {ca_cert} to the unit (the paths its [mqtt] tls "
            "names); render the ACL from the inventory and reload the broker "
            "(config/mosquitto/README).").format(
        unit=entry.unit, site=entry.site, serial=entry.serial, not_after=entry.not_after,
        inventory=inventory, cert=out, ca_cert=ca.cert_path), file=sys.stderr)
    print(out)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    use_language(args.lang)
    ca = CertificateAuthority(args.dir)
    try:
        revoked = ca.revoke(args.unit, inventory=_inventory_arg(args))
    except (CaError, OSError) as err:
        return _failed(err)
    inventory = _inventory_arg(args) or ca.default_inventory
    serials = ", ".join(e.serial for e in revoked) or _("none still valid")
    print(_("revoked {unit} ({serials}); wrote {crl}; removed it from {inventory}. Copy the CRL "
            "to the broker, render the ACL, and reload it: "
            "kill -HUP $(cat /run/mosquitto/mosquitto.pid)").format(
        unit=args.unit, serials=serials, crl=ca.crl_path, inventory=inventory), file=sys.stderr)
    print(ca.crl_path)
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    use_language(args.lang)
    ca = CertificateAuthority(args.dir)
    try:
        path = ca.write_crl(days=args.days)
    except (CaError, OSError) as err:
        return _failed(err)
    print(path)
    return 0


STATES = {"valid": N_("valid"), "expired": N_("expired"), "revoked": N_("revoked")}


def _width(text: str) -> int:
    """Columns ``text`` takes on a terminal: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, columns: int) -> str:
    return text + " " * max(0, columns - _width(text))


def cmd_list(args: argparse.Namespace) -> int:
    use_language(args.lang)
    ca = CertificateAuthority(args.dir)
    try:
        entries = ca.issued()
    except (CaError, OSError) as err:
        return _failed(err)
    now = _now()
    rows = []
    for e in entries:
        state = "revoked" if e.revoked else "expired" if e.expired(now) else "valid"
        rows.append({**e.__dict__, "state": state})
    if args.json:
        # For scripts: the keys and states as they are, in any language.
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    widths = (24, 16, 8, 21, 0)
    table = [(_("unit"), _("site"), _("state"), _("expires"), _("serial"))]
    table += [(r["unit"], r["site"], _(STATES[r["state"]]), r["not_after"], r["serial"])
              for r in rows]
    for cells in table:
        print(" ".join(_pad(c, w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    use_language(args.lang)
    ca = CertificateAuthority(args.dir)
    try:
        key_path, cert_path = ca.server(args.names, Path(args.out), days=args.days)
    except (CaError, OSError) as err:
        return _failed(err)
    print(_("wrote {cert} and {key} (0600) for the broker").format(cert=cert_path, key=key_path),
          file=sys.stderr)
    print(cert_path)
    return 0


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _("{text!r} is not a number of days").format(text=text)) from None
    if not 1 <= value <= CA_DAYS * 3:
        raise argparse.ArgumentTypeError(_("{days} days is out of range").format(days=value))
    return value


def add_parser(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Register ``ca`` (init, sign, revoke, crl, list, server) on the main CLI."""
    ca = subparsers.add_parser(
        "ca", help="the district's certificate authority for units' broker certificates",
        description="Issue and revoke units' broker certificates (CN = unit id).")
    ca.set_defaults(func=lambda _args: (ca.print_usage(sys.stderr), 2)[1])
    sub = ca.add_subparsers(dest="ca_command", metavar="{init,sign,revoke,crl,list,server}")

    def dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", required=True, metavar="CA_DIR", help="the CA's directory")
        p.add_argument("--lang", choices=list(LANGUAGES), default=DEFAULT_LANGUAGE,
                       help="language of the output (zh-CN)")

    def inventory_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--inventory", metavar="FILE",
                       help="inventory of units and sites (default CA_DIR/units.txt)")

    p = sub.add_parser("init", help="make a new CA")
    dir_arg(p)
    p.add_argument("--district", required=True, help="the district's name (in the CA's subject)")
    p.add_argument("--days", type=_days, default=CA_DAYS, help=f"lifetime ({CA_DAYS})")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("sign", help="issue a unit's certificate from its CSR")
    dir_arg(p)
    p.add_argument("csr", metavar="CSR", help="the request `xunfang enrol` made on the unit")
    p.add_argument("--site", required=True, help="the unit's site")
    p.add_argument("--days", type=_days, default=UNIT_DAYS, help=f"lifetime ({UNIT_DAYS})")
    p.add_argument("--out", metavar="FILE", help="certificate file (default UNIT.crt by the CSR)")
    inventory_arg(p)
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("revoke", help="revoke a unit's certificates and take it out of the "
                                      "inventory")
    dir_arg(p)
    p.add_argument("unit", metavar="UNIT")
    inventory_arg(p)
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("crl", help="write a fresh CRL (before the old one's next update)")
    dir_arg(p)
    p.add_argument("--days", type=_days, default=CRL_DAYS, help=f"validity ({CRL_DAYS})")
    p.set_defaults(func=cmd_crl)

    p = sub.add_parser("list", help="every certificate issued")
    dir_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("server", help="the broker's key and server certificate")
    dir_arg(p)
    p.add_argument("names", nargs="+", metavar="NAME", help="DNS names and IP addresses")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write server.crt/.key")
    p.add_argument("--days", type=_days, default=UNIT_DAYS, help=f"lifetime ({UNIT_DAYS})")
    p.set_defaults(func=cmd_server)
    return ca

