"""A throwaway PKI for tests that talk TLS to a real broker.

It mirrors what the centre does in production (docs/broker.md): one CA, a
server certificate for the broker, and one client certificate per unit whose
CN is the unit id, because the broker takes the CN as the username
(`use_identity_as_username`) and the ACL keys on it. A second, unrelated CA
lets tests show that a certificate the broker's CA did not sign is refused.

Keys are P-256 ECDSA: as good as RSA for these tests and generated in
microseconds, so a fresh PKI per test costs nothing.

File permissions: certificates 0644, keys 0600, directories 0755. The test
brokers run with `user root` (see brokers.py), so a 0600 key owned by root is
readable by them; pytest's own temp directories are 0700 anyway, so chmodding
only our files would not have let a broker that dropped to `mosquitto` in.

Example::

    pki = make_pki(tmp_path / "pki")
    unit = pki.client("zt-pp-03")      # CN=zt-pp-03, signed by the test CA
    rogue = pki.wrong_client("zt-pp-03")  # same CN, signed by the wrong CA
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
# Back-dated so a test machine whose clock is a little behind still accepts them.
_BACKDATE = dt.timedelta(days=1)
_VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class Credentials:
    """A certificate, its key and the CA certificate that signed it (PEM files)."""

    cert: Path
    key: Path
    ca: Path


def _write(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Traditional (SEC1) PEM, unencrypted: what `openssl ecparam -genkey` makes and
    # what both Mosquitto and Python's ssl load without a passphrase.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xunfang tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class CertificateAuthority:
    """A CA whose key and certificate live in `directory` (`ca.pem`, `ca.key`)."""

    def __init__(self, directory: Path, name: str = "xunfang test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        self.name = name
        self._key = _new_key()
        now = dt.datetime.now(dt.UTC)
        subject = _name(name)
        ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = _write(
            self.directory / "ca.pem",
            self.certificate.public_bytes(serialization.Encoding.PEM),
            0o644,
        )
        self.key_path = _write(self.directory / "ca.key", _key_pem(self._key), 0o600)

    def _issue(
        self,
        stem: str,
        common_name: str,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
    ) -> Credentials:
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path = _write(
            self.directory / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644
        )
        key_path = _write(self.directory / f"{stem}.key", _key_pem(key), 0o600)
        return Credentials(cert=cert_path, key=key_path, ca=self.cert_path)

    def write_crl(self, revoked: Sequence[Credentials] = ()) -> Path:
        """Write `crl.pem`, a CRL revoking `revoked` (may be empty), valid for a day."""
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=1))
        )
        for creds in revoked:
            cert = x509.load_pem_x509_certificate(creds.cert.read_bytes())
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(now - dt.timedelta(minutes=1))
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        path = self.directory / "crl.pem"
        # Write then rename: a broker reloading mid-write never sees half a CRL.
        tmp = _write(path.with_suffix(".tmp"), crl.public_bytes(serialization.Encoding.PEM), 0o644)
        os.replace(tmp, path)
        return path

    def issue_server(self, hosts: tuple[str, ...] = SERVER_HOSTS) -> Credentials:
        """A server certificate valid for `hosts` (IP addresses become IP SANs)."""
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return self._issue("server", hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, sans)

    def issue_client(self, common_name: str) -> Credentials:
        """A client certificate with CN = `common_name` (the broker username)."""
        if not common_name or "/" in common_name or common_name.startswith("."):
            raise ValueError(f"unsuitable client certificate CN {common_name!r}")
        return self._issue(
            f"client-{common_name}", common_name, ExtendedKeyUsageOID.CLIENT_AUTH, []
        )


@dataclass
class Pki:
    """The test CA with its server certificate, plus an unrelated 'wrong' CA."""

    ca: CertificateAuthority
    wrong_ca: CertificateAuthority
    server: Credentials
    _clients: dict[tuple[bool, str], Credentials] = field(default_factory=dict)

    @property
    def ca_cert(self) -> Path:
        return self.ca.cert_path

    def client(self, username: str) -> Credentials:
        """Client credentials signed by the test CA (cached per username)."""
        return self._client(username, wrong=False)

    def wrong_client(self, username: str) -> Credentials:
        """Client credentials with the same CN but signed by the wrong CA.

        `ca` in the result is still the *test* CA, so a client using it trusts
        the real broker and only its own certificate is foreign.
        """
        return self._client(username, wrong=True)

    def _client(self, username: str, *, wrong: bool) -> Credentials:
        cached = self._clients.get((wrong, username))
        if cached is None:
            issuer = self.wrong_ca if wrong else self.ca
            issued = issuer.issue_client(username)
            cached = Credentials(cert=issued.cert, key=issued.key, ca=self.ca.cert_path)
            self._clients[(wrong, username)] = cached
        return cached


def make_pki(directory: Path, hosts: tuple[str, ...] = SERVER_HOSTS) -> Pki:
    """Create a test CA, a server certificate for `hosts` and a wrong CA under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    ca = CertificateAuthority(directory / "ca", "xunfang test CA")
    wrong = CertificateAuthority(directory / "wrong-ca", "xunfang wrong CA")
    return Pki(ca=ca, wrong_ca=wrong, server=ca.issue_server(hosts))
