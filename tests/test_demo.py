"""The README's demo runs end to end and tells its story (it must never rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_the_demo_tells_the_whole_story(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--seconds", "75",
         "--dir", str(tmp_path / "demo"), "--week-days", "2"],
        capture_output=True, text=True, timeout=200)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in out + proc.stderr
    unit = [line for line in out.splitlines() if "unit   │" in line]
    centre = [line for line in out.splitlines() if "centre │" in line]
    # The card list applied, taps decided, a two-person police-led visit.
    assert any("command" in line and "name=cards" in line and "result=applied" in line
               for line in unit)
    assert any("checkin" in line and "decision=accepted" in line and "role=police" in line
               for line in unit)
    assert any("decision=unknown" in line for line in unit)
    assert any(" visit " in line and "police_led=true" in line and "two_person=true" in line
               for line in unit)
    assert "the unit shows: four green flashes" in out
    # The level raised: the warning light strobes; the camera photographs taps.
    assert any("lights" in line and "mode=strobe" in line and "reason=level" in line
               for line in unit)
    assert any(" snapshot " in line and "ref=demo-pp-01:" in line for line in unit)
    # The tap made while the broker was away reaches the centre after it returns.
    offline_tap = next(line for line in unit if "role=village" in line)
    seq = re.search(r"#(\d+)", offline_tap)
    assert seq is not None
    # And at the end the centre's ledger holds everything, that tap included.
    acked = [line for line in unit if "ledger holds every event up to" in line]
    assert acked and acked[-1].endswith("(0 pending)")
    last = re.search(r"up to #(\d+)", acked[-1])
    assert last is not None and int(last.group(1)) > int(seq.group(1))
    # The centre's live view saw the unit's events too.
    assert any("demo/demo-pp-01" in line and " event " in line for line in centre)
    # The patrol vehicle: crew on duty, roof light strobing, a track, visits by GNSS at
    # both points (the receiver a pty fed a real capture, then a generated route).
    car = [line for line in out.splitlines() if "car    │" in line]
    assert sum(" duty " in line and "state=on" in line for line in car) == 2
    assert any("light=roof" in line and "mode=strobe" in line for line in car)
    assert any("gnss_time=2015-02-25" in line for line in car), "the real capture's fix"
    for point in ("school", "factory"):
        assert any(" visit " in line and "source=gnss" in line and f"point={point}" in line
                   and "police_led=true" in line for line in car), point
    assert any("demo/demo-car-01" in line and " track " in line and "km/h" in line
               for line in centre)
    # The district's days through real units, and the report made from its ledger.
    report = re.search(r"the compliance report: (\S+)", out)
    assert report is not None and Path(report.group(1)).read_text(encoding="utf-8")
    assert (Path(report.group(1)).parent / "report.json").exists()
