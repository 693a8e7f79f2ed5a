"""Enrolment: ``xunfang ca`` and ``xunfang enrol`` against a real Mosquitto.

The certificates are made by the commands themselves (the unit's key on the
"unit", the CSR signed at the "centre"), the broker runs the shipped
``xunfang.conf`` with the CA's ``crl.pem`` as its ``crlfile``, and the ACL is
rendered by ``render-acl.py`` from the inventory ``ca sign`` wrote.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from center.ca import CaError, CertificateAuthority, site_of
from firmware_py.certhealth import certificate_health
from firmware_py.cli import main
from firmware_py.enrol import make_request
from tests.support.brokers import ACL_TEMPLATE, ConnectFailed, Mosquitto, MqttProbe
from tests.support.daemon import Daemon
from tests.support.pki import Credentials
from tests.support.units import base_document, merge, write_config

SITE, OTHER_SITE = "zhuantang", "xihu"
UNIT, NEIGHBOUR, STRANGER = "zt-pp-03", "zt-pp-04", "xh-pp-01"
NOT_AUTHORIZED = 0x87
RENDER_ACL = ACL_TEMPLATE.parent / "render-acl.py"

Factory = Callable[..., Mosquitto]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def xunfang(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@dataclass
class Unit:
    """One unit's config and its TLS file paths, on its own 'SD card'."""

    unit: str
    site: str
    config: Path
    tls: Path

    @property
    def key(self) -> Path:
        return self.tls / f"{self.unit}.key"

    @property
    def cert(self) -> Path:
        return self.tls / f"{self.unit}.crt"

    def credentials(self, ca_cert: Path) -> Credentials:
        return Credentials(cert=self.cert, key=self.key, ca=ca_cert)


def make_unit(root: Path, unit: str, site: str) -> Unit:
    home = root / unit
    tls = home / "tls"
    tls.mkdir(parents=True)
    doc = merge(base_document(home / "data"), {
        "unit": {"id": unit, "site": site},
        "mqtt": {"port": 8883, "tls": {"ca": "tls/ca.crt", "cert": f"tls/{unit}.crt",
                                       "key": f"tls/{unit}.key"}},
    })
    return Unit(unit, site, write_config(home / "unit.toml", doc), tls)


def enrol_and_sign(capsys: pytest.CaptureFixture[str], ca_dir: Path, unit: Unit,
                   inventory: Path, days: int = 825) -> None:
    """What an installer does: enrol on the unit, sign at the centre, copy back."""
    code, out, err = xunfang(capsys, "enrol", "-c", str(unit.config))
    assert code == 0, err
    csr = Path(out.strip())
    code, out, err = xunfang(capsys, "ca", "sign", "--dir", str(ca_dir), str(csr),
                             "--site", unit.site, "--days", str(days),
                             "--inventory", str(inventory))
    assert code == 0, err
    assert Path(out.strip()) == csr.with_name(f"{unit.unit}.crt") == unit.cert
    (unit.tls / "ca.crt").write_bytes((ca_dir / "ca.crt").read_bytes())


def render(inventory: Path, out: Path) -> Path:
    """The ACL as installers render it (config/mosquitto/README, step 4)."""
    done = subprocess.run([sys.executable, str(RENDER_ACL), "--units", str(inventory),
                           "--template", str(ACL_TEMPLATE), "--output", str(out)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return out


@dataclass(frozen=True)
class DistrictPki:
    """The broker's side of the district CA, in the shape tests.support.brokers reads."""

    ca_cert: Path
    server: Credentials


@pytest.fixture
def district(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    ca_dir = tmp_path / "ca"
    code, out, err = xunfang(capsys, "ca", "init", "--dir", str(ca_dir), "--district", "Xihu")
    assert code == 0, err
    assert Path(out.strip()) == ca_dir / "ca.crt"
    code, _out, err = xunfang(capsys, "ca", "server", "--dir", str(ca_dir), "127.0.0.1",
                              "localhost", "--out", str(tmp_path / "broker"))
    assert code == 0, err
    return ca_dir


def start_broker(factory: Factory, tmp_path: Path, ca_dir: Path, inventory: Path) -> Mosquitto:
    pki = DistrictPki(ca_cert=ca_dir / "ca.crt", server=Credentials(
        cert=tmp_path / "broker/server.crt", key=tmp_path / "broker/server.key",
        ca=ca_dir / "ca.crt"))
    acl = render(inventory, tmp_path / "xunfang.acl")
    return factory(shipped_config=True, pki=pki, acl_file=acl,
                   extra=[f"crlfile {ca_dir / 'crl.pem'}"])


def connect(broker: Mosquitto, creds: Credentials, client_id: str) -> MqttProbe:
    probe = MqttProbe(broker.host, broker.port, client_id=client_id, tls=creds)
    try:
        probe.connect()
    except BaseException:
        probe.close()
        raise
    return probe


def topic(unit: str, rest: str, site: str = SITE) -> str:
    return f"xunfang/v1/{site}/{unit}/{rest}"


# -- the whole path, with a real broker -------------------------------------------------


def test_an_enrolled_unit_connects_and_publishes_only_as_itself_in_its_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], district: Path,
    mosquitto_factory: Factory,
) -> None:
    inventory = tmp_path / "units.txt"
    units = [make_unit(tmp_path, u, s) for u, s in
             ((UNIT, SITE), (NEIGHBOUR, SITE), (STRANGER, OTHER_SITE))]
    for unit in units:
        enrol_and_sign(capsys, district, unit, inventory)
    assert (tmp_path / "units.txt").read_text().splitlines()[1:] == [
        f"{UNIT} {SITE}", f"{NEIGHBOUR} {SITE}", f"{STRANGER} {OTHER_SITE}"]
    broker = start_broker(mosquitto_factory, tmp_path, district, inventory)

    unit = units[0]
    with connect(broker, unit.credentials(district / "ca.crt"), f"xunfang_{UNIT}") as probe:
        for rest in ("status", "health", "events/checkin"):
            assert not probe.publish(topic(UNIT, rest)).is_failure, rest
        # Not as its neighbour, not under another site's name.
        assert probe.publish(topic(NEIGHBOUR, "health")).value == NOT_AUTHORIZED
        assert probe.publish(topic(UNIT, "health", OTHER_SITE)).value == NOT_AUTHORIZED
        assert probe.publish(topic(UNIT, "cmd")).value == NOT_AUTHORIZED
    with connect(broker, units[2].credentials(district / "ca.crt"), "x") as stranger:
        assert not stranger.publish(topic(STRANGER, "health", OTHER_SITE)).is_failure
        assert stranger.publish(topic(STRANGER, "health", SITE)).value == NOT_AUTHORIZED


def test_a_unit_signed_by_another_districts_ca_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], district: Path,
    mosquitto_factory: Factory,
) -> None:
    inventory = tmp_path / "units.txt"
    enrol_and_sign(capsys, district, make_unit(tmp_path / "ours", UNIT, SITE), inventory)
    broker = start_broker(mosquitto_factory, tmp_path, district, inventory)
    other_ca = tmp_path / "other-ca"
    assert xunfang(capsys, "ca", "init", "--dir", str(other_ca), "--district", "Other")[0] == 0
    # The same unit id and site, listed in our inventory: only the issuer differs.
    rogue = make_unit(tmp_path / "rogue", UNIT, SITE)
    enrol_and_sign(capsys, other_ca, rogue, tmp_path / "other-units.txt")
    with pytest.raises(ConnectFailed):
        connect(broker, rogue.credentials(district / "ca.crt"), "rogue")


def test_a_revoked_unit_is_refused_after_the_broker_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], district: Path,
    mosquitto_factory: Factory,
) -> None:
    inventory = tmp_path / "units.txt"
    stolen, other = make_unit(tmp_path, UNIT, SITE), make_unit(tmp_path, NEIGHBOUR, SITE)
    for unit in (stolen, other):
        enrol_and_sign(capsys, district, unit, inventory)
    broker = start_broker(mosquitto_factory, tmp_path, district, inventory)
    creds = stolen.credentials(district / "ca.crt")
    with connect(broker, creds, "before") as open_conn:
        crl_before = (district / "crl.pem").read_bytes()
        code, out, err = xunfang(capsys, "ca", "revoke", "--dir", str(district), UNIT,
                                 "--inventory", str(inventory))
        assert code == 0, err
        assert Path(out.strip()) == district / "crl.pem"
        assert (district / "crl.pem").read_bytes() != crl_before
        assert UNIT not in inventory.read_text()
        assert "kill -HUP" in err
        render(inventory, broker.acl_path)   # what the operator installs
        broker.reload()
        # The open connection may do nothing any more (the ACL); new ones fail the
        # TLS handshake (the CRL).
        assert open_conn.publish(topic(UNIT, "health")).value == NOT_AUTHORIZED
    with pytest.raises(ConnectFailed):
        connect(broker, creds, "after")
    with connect(broker, other.credentials(district / "ca.crt"), "neighbour") as neighbour:
        assert not neighbour.publish(topic(NEIGHBOUR, "health")).is_failure
    broker.restart()
    with pytest.raises(ConnectFailed):
        connect(broker, creds, "after-restart")
    code, out, _ = xunfang(capsys, "ca", "list", "--dir", str(district), "--json")
    states = {row["unit"]: row["state"] for row in json.loads(out)}
    assert states == {UNIT: "revoked", NEIGHBOUR: "valid"}


# -- the commands' own rules ------------------------------------------------------------


def test_ca_init_keeps_its_key_owner_only_and_never_over_an_existing_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], district: Path,
) -> None:
    assert mode(district / "ca.key") == 0o600
    assert mode(district) == 0o700
    cert = x509.load_pem_x509_certificate((district / "ca.crt").read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key_before = (district / "ca.key").read_bytes()
    code, _out, err = xunfang(capsys, "ca", "init", "--dir", str(district), "--district", "X",
                              "--lang", "en")
    assert code == 1 and "already holds a CA" in err
    assert (district / "ca.key").read_bytes() == key_before
    os.chmod(district / "ca.key", 0o644)
    code, _out, err = xunfang(capsys, "ca", "list", "--dir", str(district))
    assert code == 1 and "可被组用户或其他用户读取：请执行 chmod 600" in err


def test_enrol_writes_the_key_0600_prints_only_the_csr_path_and_keeps_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    unit = make_unit(tmp_path, UNIT, SITE)
    code, out, err = xunfang(capsys, "enrol", "-c", str(unit.config))
    assert code == 0, err
    assert mode(unit.key) == 0o600
    assert out.strip() == str(unit.tls / f"{UNIT}.csr")
    assert "PRIVATE" not in out + err
    csr = x509.load_pem_x509_csr(Path(out.strip()).read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == UNIT
    assert site_of(csr) == SITE
    # Renewal: the key stays, so the running uplink's key and certificate still match.
    key = unit.key.read_bytes()
    code, _out, err = xunfang(capsys, "enrol", "-c", str(unit.config), "--lang", "en")
    assert code == 0 and "kept the existing key" in err
    assert unit.key.read_bytes() == key
    os.chmod(unit.key, 0o640)
    code, _out, err = xunfang(capsys, "enrol", "-c", str(unit.config), "--lang", "en")
    assert code == 1 and "can be read by group or others: chmod 600" in err
    code, _out, err = xunfang(capsys, "enrol", "-c", str(unit.config), "--lang", "zh")
    assert code == 1 and "组用户或其他用户可读: 请执行 chmod 600" in err


def test_enrol_without_tls_paths_says_what_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path / "unit.toml", base_document(tmp_path / "data"))
    code, _out, err = xunfang(capsys, "enrol", "-c", str(config), "--lang", "en")
    assert code == 2 and "[mqtt] tls needs ca, cert and key" in err
    code, _out, err = xunfang(capsys, "enrol", "-c", str(config), "--lang", "zh")
    assert code == 2 and "[mqtt] tls 需要填写 ca、cert 和 key 的路径" in err


def _csr(tmp_path: Path, unit: str, site: str) -> bytes:
    return make_request(ec.generate_private_key(ec.SECP256R1()), unit, site)


@pytest.mark.parametrize(("unit", "error"), [
    ("Zt_PP_03", "is not a unit id"),
    ("centre", "reserved for the centre"),
    ("ledger", "reserved for the centre"),
])
def test_sign_refuses_a_cn_that_is_not_a_unit_id(tmp_path: Path, district: Path, unit: str,
                                                 error: str) -> None:
    with pytest.raises(CaError, match=error):
        CertificateAuthority(district).sign(_csr(tmp_path, unit, SITE), SITE)


def test_sign_refuses_a_site_other_than_the_requests(tmp_path: Path, district: Path) -> None:
    with pytest.raises(CaError, match="names site 'zhuantang', not 'xihu'"):
        CertificateAuthority(district).sign(_csr(tmp_path, UNIT, SITE), OTHER_SITE)


def test_sign_refuses_a_unit_id_already_issued_to_another_site(
    tmp_path: Path, district: Path,
) -> None:
    ca = CertificateAuthority(district)
    inventory = tmp_path / "units.txt"
    ca.sign(_csr(tmp_path, UNIT, SITE), SITE, inventory=inventory)
    ca.sign(_csr(tmp_path, UNIT, SITE), SITE, inventory=inventory)   # renewal: fine
    before = inventory.read_text()
    with pytest.raises(CaError, match="already issued to site zhuantang"):
        ca.sign(_csr(tmp_path, UNIT, OTHER_SITE), OTHER_SITE, inventory=inventory)
    assert inventory.read_text() == before == f"{before.splitlines()[0]}\n{UNIT} {SITE}\n"
    # Moving a unit: revoke, then sign for the new site.
    ca.revoke(UNIT, inventory=inventory)
    ca.sign(_csr(tmp_path, UNIT, OTHER_SITE), OTHER_SITE, inventory=inventory)
    assert inventory.read_text().splitlines()[1:] == [f"{UNIT} {OTHER_SITE}"]


def test_revoke_keeps_other_lines_and_comments_of_the_inventory(
    tmp_path: Path, district: Path,
) -> None:
    inventory = tmp_path / "units.txt"
    inventory.write_text(f"# our units\n{NEIGHBOUR} {SITE}  # gate\n")
    ca = CertificateAuthority(district)
    ca.sign(_csr(tmp_path, UNIT, SITE), SITE, inventory=inventory)
    ca.revoke(UNIT, inventory=inventory)
    assert inventory.read_text() == f"# our units\n{NEIGHBOUR} {SITE}  # gate\n"
    crl = x509.load_pem_x509_crl((district / "crl.pem").read_bytes())
    assert len(list(crl)) == 1
    with pytest.raises(CaError, match="never issued"):
        ca.revoke("zt-pp-99", inventory=inventory)


def test_certificate_health_asks_for_renewal_30_days_before_expiry(
    tmp_path: Path, district: Path,
) -> None:
    ca = CertificateAuthority(district)
    cert, _entry = ca.sign(_csr(tmp_path, UNIT, SITE), SITE, days=45,
                           inventory=tmp_path / "units.txt")
    path = tmp_path / "unit.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    now = dt.datetime.now(dt.UTC)

    def at(days: float) -> dict[str, object]:
        return certificate_health(path, int((now + dt.timedelta(days=days)).timestamp() * 1000))

    assert at(0) == {"cert": "ok", "cert_expires_in_days": 45.0}
    assert at(16)["cert"] == "renew"
    assert at(16)["cert_expires_in_days"] == pytest.approx(29, abs=0.1)
    assert at(46)["cert"] == "expired"
    assert certificate_health(None, 0) == {"cert": None, "cert_expires_in_days": None}
    assert certificate_health(tmp_path / "missing.crt", 0)["cert"] == "unknown"


def _tool_credentials(ca_dir: Path, name: str, out: Path) -> Credentials:
    """A `ledger` certificate from the district CA, as the OpenSSL recipe makes it."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(out / f"{name}.key", 0o600)
    return Credentials(cert=out / f"{name}.crt", key=out / f"{name}.key", ca=ca_dir / "ca.crt")


def test_the_uplink_reports_a_certificate_due_for_renewal_in_health(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], district: Path,
    mosquitto_factory: Factory,
) -> None:
    inventory = tmp_path / "units.txt"
    unit = make_unit(tmp_path, UNIT, SITE)
    enrol_and_sign(capsys, district, unit, inventory, days=20)
    broker = start_broker(mosquitto_factory, tmp_path, district, inventory)
    text = unit.config.read_text().replace("port = 8883", f"port = {broker.port}")
    unit.config.write_text(text)
    ledger = connect(broker, _tool_credentials(district, "ledger", tmp_path / "ledger"),
                     "xunfang-ledger")
    daemon = Daemon(unit.config, tmp_path / "uplink.log", ("uplink",))
    try:
        assert all(not rc.is_failure for rc in ledger.subscribe(topic(UNIT, "health")))
        daemon.start()
        health = json.loads(ledger.expect(topic(UNIT, "health"), timeout=30).payload)
    finally:
        ledger.close()
        daemon.stop()
    assert health["cert"] == "renew", daemon.text()
    assert health["cert_expires_in_days"] == pytest.approx(20, abs=0.2)


# -- what the operator reads: Chinese by default, English with --lang en ------------------


def test_ca_list_speaks_chinese_by_default_and_english_with_lang_en(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], district: Path,
) -> None:
    ca = CertificateAuthority(district)
    ca.sign(_csr(tmp_path, UNIT, SITE), SITE)
    ca.sign(_csr(tmp_path, NEIGHBOUR, SITE), SITE)
    ca.revoke(NEIGHBOUR)
    code, out, err = xunfang(capsys, "ca", "list", "--dir", str(district))
    assert code == 0, err
    heading, *rows = out.splitlines()
    assert heading.split() == ["设备编号", "点位", "状态", "到期时间", "序列号"]
    states = {row.split()[0]: row.split()[2] for row in rows}
    assert states == {UNIT: "有效", NEIGHBOUR: "已吊销"}
    # The columns line up on a terminal: a CJK character takes two columns.
    def columns(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(c) == "W" else 1 for c in text)

    for row in rows:
        for cell, title in zip(row.split(), heading.split(), strict=True):
            assert columns(row[:row.index(cell)]) == columns(heading[:heading.index(title)])
    code, out, err = xunfang(capsys, "ca", "list", "--dir", str(district), "--lang", "en")
    assert code == 0, err
    heading, *rows = out.splitlines()
    assert heading.split() == ["unit", "site", "state", "expires", "serial"]
    assert {row.split()[0]: row.split()[2] for row in rows} == {UNIT: "valid",
                                                               NEIGHBOUR: "revoked"}
    # --json is for scripts: the same keys and states in any language.
    code, out, _err = xunfang(capsys, "ca", "list", "--dir", str(district), "--json")
    assert {row["unit"]: row["state"] for row in json.loads(out)} == {UNIT: "valid",
                                                                     NEIGHBOUR: "revoked"}


def test_a_refused_sign_says_why_in_chinese_by_default_and_in_english_with_lang_en(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], district: Path,
) -> None:
    csr = tmp_path / f"{UNIT}.csr"
    csr.write_bytes(_csr(tmp_path, UNIT, SITE))
    code, out, err = xunfang(capsys, "ca", "sign", "--dir", str(district), str(csr),
                             "--site", OTHER_SITE)
    assert (code, out) == (1, "")
    assert err == (f"xunfang ca: {csr}: {UNIT} 的签名请求写的点位是 'zhuantang'，"
                   "不是 'xihu'\n")
    code, out, err = xunfang(capsys, "ca", "sign", "--dir", str(district), str(csr),
                             "--site", OTHER_SITE, "--lang", "en")
    assert (code, out) == (1, "")
    assert err == (f"xunfang ca: {csr}: the request of {UNIT} names site 'zhuantang', "
                   "not 'xihu'\n")
    # And one that works says what to do next, in Chinese.
    code, out, err = xunfang(capsys, "ca", "sign", "--dir", str(district), str(csr),
                             "--site", SITE)
    assert code == 0, err
    assert f"已为点位 {SITE} 的设备 {UNIT} 签发证书" in err
    assert out.strip() == str(tmp_path / f"{UNIT}.crt")
    # The library's errors stay English for logs and scripts, whatever the CLI spoke.
    with pytest.raises(CaError, match="never issued a certificate to 'zt-pp-99'"):
        CertificateAuthority(district).revoke("zt-pp-99")


def test_a_missing_ca_directory_is_named_in_the_operators_language(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "nowhere"
    code, _out, err = xunfang(capsys, "ca", "revoke", "--dir", str(missing), UNIT)
    assert code == 1
    assert err == (f"xunfang ca: {missing} 不是证书颁发机构目录：缺少 ca.key"
                   "（请用 `xunfang ca init` 建立）\n")
    code, _out, err = xunfang(capsys, "ca", "crl", "--dir", str(missing), "--lang", "en")
    assert code == 1 and f"{missing} is not a CA directory: no ca.key" in err
