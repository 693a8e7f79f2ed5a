"""The unit's configuration: one TOML file, validated before anything starts.

The contract is ``docs/configuration.md``. Every rule lives in the pydantic
models below; :func:`load_config` turns their errors into one line per problem
with its key path, what was expected and what was found, e.g.::

    readers[0].baud: must be one of 9600, 19200, 38400, 57600, 115200, got 9601

Unknown keys are errors (a typo must not be silently ignored), with a "did you
mean" from the keys that section knows. A hostile file is refused before it
can cost memory or time: it is read only if it is a regular file of at most
:data:`MAX_CONFIG_BYTES`, and no table or array may be deeper than
:data:`MAX_DEPTH` or longer than :data:`MAX_ENTRIES` (the keys have lower,
documented limits of their own).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import json
import os
import re
import stat
import tomllib
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .exc import ConfigInvalid, ConfigUnreadable
from .timesync import DEFAULT_GNSS_DEVICE, DEVICE_PATTERN, HOST_PATTERN

NAME_PATTERN = r"^[a-z0-9-]{1,32}$"
DEVICE_NAME_PATTERN = r"^[a-z0-9_-]{1,32}$"
KEY_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
BAUD_RATES = (9600, 19200, 38400, 57600, 115200)
LIGHT_MODES = ("off", "on", "blink", "strobe", "alternate")

# Limits (docs/configuration.md, Limits). A unit's config is a few KiB; parsing
# this much TOML takes well under a second even on a Pi.
MAX_CONFIG_BYTES = 256 * 1024
#: Tables and arrays inside each other (``cameras[0].masks[0][0]`` is 5 deep).
MAX_DEPTH = 8
#: Entries in any one table or array, whatever its key.
MAX_ENTRIES = 256
MAX_READERS = 8
MAX_LIGHTS = 16
MAX_CAMERAS = 4
MAX_WINDOWS = 24
MAX_KEYS = 16
MAX_MASKS = 32
MAX_MASK_CORNERS = 64

LightMode = Literal["off", "on", "blink", "strobe", "alternate"]
# BCM numbers of the 40-pin header's GPIOs (gpiozero's "GPIO17" is 17).
GpioPin = Annotated[int, Field(ge=2, le=27)]
Level = Literal[1, 2, 3]
# TOML has no path type: paths are strings, turned into Path (the rest is strict).
FilePath = Annotated[Path, Field(strict=False)]


class Section(BaseModel):
    """Every section forbids unknown keys and is immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def parse_window(text: str) -> tuple[int, int]:
    """``"23:00-05:00"`` → minutes after midnight of start and end (may cross midnight)."""
    m = WINDOW_RE.match(text)
    if not m:
        raise ValueError(f"must be a time window HH:MM-HH:MM, got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"window {text!r} is empty: start and end are the same")
    return start, end


def int_keys(value: Any) -> Any:
    """TOML table keys are strings (``{ 3 = 120 }`` reads as ``{"3": 120}``): levels are ints."""
    if isinstance(value, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value.items()}
    return value


def check_windows(value: dict[str, str]) -> dict[str, str]:
    """Named daily windows (``{"night": "23:00-05:00"}``), each one checked."""
    for name, window in value.items():
        try:
            parse_window(window)
        except ValueError as err:
            raise ValueError(f"window {name!r}: {err}") from None
    return value


# -- [unit] -------------------------------------------------------------------------


class UnitSection(Section):
    id: str = Field(pattern=NAME_PATTERN)
    site: str = Field(pattern=NAME_PATTERN)
    kind: Literal["patrol_point", "kiosk", "checkpoint", "vehicle"]
    timezone: str = "Asia/Shanghai"
    data_dir: FilePath = Path("/var/lib/xunfang")
    # Where the unit writes a status file that does not depend on the journal
    # (so a failing journal can still be reported).
    runtime_dir: FilePath = Path("/run/xunfang")
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"must be an IANA time zone such as Asia/Shanghai, got {value!r}") \
                from err
        return value

    @model_validator(mode="after")
    def _both_coordinates(self) -> UnitSection:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude go together: set both or neither")
        return self


# -- [mqtt] -------------------------------------------------------------------------


class TlsSection(Section):
    ca: FilePath
    cert: FilePath | None = None
    key: FilePath | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: set both (client certificate) or neither")
        return self


class MqttSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_file: FilePath | None = None
    tls: TlsSection | None = None
    centre_ack: bool = True
    resend_after_s: int = Field(default=60, ge=5, le=86400)
    health_interval_s: int = Field(default=60, ge=5, le=86400)
    # Events published and not yet PUBACKed at one time.
    inflight: int = Field(default=20, ge=1, le=1000)
    reconnect_min_s: float = Field(default=1.0, gt=0, le=60)
    reconnect_max_s: float = Field(default=120.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _password_needs_user(self) -> MqttSection:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set but username is not")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self


# -- [security] ---------------------------------------------------------------------


def _check_public_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError("must be the standard base64 of a raw 32-byte Ed25519 public key, "
                         "as `xunfang keys new` prints it") from err
    if len(raw) != 32:
        raise ValueError(f"must decode to 32 bytes (an Ed25519 public key), got {len(raw)}")
    return value


PublicKey = str
KeyName = Annotated[str, Field(pattern=KEY_NAME_PATTERN)]


class SecuritySection(Section):
    command_keys: dict[KeyName, PublicKey] = Field(default_factory=dict, max_length=MAX_KEYS)
    ack_keys: dict[KeyName, PublicKey] = Field(default_factory=dict, max_length=MAX_KEYS)

    @field_validator("command_keys", "ack_keys")
    @classmethod
    def _keys_decode(cls, value: dict[str, str]) -> dict[str, str]:
        for name, key in value.items():
            try:
                _check_public_key(key)
            except ValueError as err:
                raise ValueError(f"key {name!r}: {err}") from None
        return value

    @model_validator(mode="after")
    def _ack_keys_cannot_command(self) -> SecuritySection:
        # The ledger runs unattended: its key must never be able to command.
        shared = set(self.command_keys.values()) & set(self.ack_keys.values())
        if shared:
            names = sorted(n for n, k in self.ack_keys.items() if k in shared)
            raise ValueError(f"ack key(s) {', '.join(names)} also listed in command_keys: "
                             "a ledger's key must not be able to command")
        return self


# -- [[readers]], [feedback], [lights.*], [inputs] ------------------------------------------


class ReaderConfig(Section):
    name: str = Field(pattern=DEVICE_NAME_PATTERN)
    driver: Literal["rdm6300", "pn532", "line", "sim"]
    port: str = Field(min_length=1)
    baud: Literal[9600, 19200, 38400, 57600, 115200] | None = None
    # A relay on this GPIO cuts the reader's power to revive a hung reader.
    power_pin: GpioPin | None = None
    # `line` readers: how the card number is written on the line.
    number_format: Literal["auto", "hex", "dec"] = "auto"
    # `rdm6300` readers: the one frame form read, 14 bytes or the RF125-PS 13. None is
    # the 14-byte form (kept unset so a dumped config of another driver parses again).
    frame: Literal["rdm6300", "rf125"] | None = None

    @field_validator("frame")
    @classmethod
    def _frame_is_for_rdm6300(cls, value: str | None, info: ValidationInfo) -> str | None:
        driver = info.data.get("driver")
        if value is not None and driver is not None and driver != "rdm6300":
            hint = ' (a sim reader takes its form from port, e.g. "sim://rf125")' \
                if driver == "sim" else ""
            raise ValueError(f'only an "rdm6300" reader has a frame form, this one is '
                             f'"{driver}"{hint}')
        return value


class FeedbackSection(Section):
    ok_led: GpioPin | None = None
    error_led: GpioPin | None = None
    buzzer: GpioPin | None = None


class LightConfig(Section):
    pins: list[GpioPin] = Field(min_length=1, max_length=2)
    active_high: bool = True
    # "on-duty": lit while someone is on duty (a patrol vehicle's roof light on patrol).
    schedule: Literal["sunset-sunrise", "always", "never", "on-duty"] | Annotated[
        list[str], Field(max_length=MAX_WINDOWS)] = "never"
    schedule_mode: LightMode | None = None
    level_modes: dict[Level, LightMode] | None = None

    @field_validator("schedule")
    @classmethod
    def _windows(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list of windows: use \"never\" for a light that "
                                 "stays off outside levels and overrides")
            for w in value:
                parse_window(w)
        return value

    @field_validator("level_modes", mode="before")
    @classmethod
    def _level_keys(cls, value: Any) -> Any:
        return int_keys(value)

    @model_validator(mode="after")
    def _modes_fit_pins(self) -> LightConfig:
        if len(set(self.pins)) != len(self.pins):
            raise ValueError(f"pins {self.pins} name the same pin twice")
        modes = [self.schedule_mode, *(self.level_modes or {}).values()]
        if len(self.pins) == 1 and "alternate" in modes:
            raise ValueError("mode alternate needs two pins")
        return self

    @property
    def effective_schedule_mode(self) -> str:
        return self.schedule_mode or ("alternate" if len(self.pins) == 2 else "on")

    @property
    def effective_level_modes(self) -> dict[int, str]:
        if self.level_modes is not None:
            return dict(self.level_modes)
        return {1: "strobe", 2: "alternate" if len(self.pins) == 2 else "blink"}


class InputsSection(Section):
    panic: GpioPin | None = None
    tamper: GpioPin | None = None
    debounce_ms: int = Field(default=50, ge=1, le=2000)
    # Which contact is normal (docs/lights.md): a panic button is normally open
    # (active when pressed, pin low); a tamper loop normally closed (active when
    # the lid opens or the wire is cut, pin high).
    panic_normally_closed: bool = False
    tamper_normally_closed: bool = True
    # A panic alarm stays active at least this long after the press (momentary buttons).
    panic_hold_s: int = Field(default=0, ge=0, le=86400)
    # Lights a panic alarm strobes; None: the light named "warning", if there is one.
    alarm_lights: Annotated[list[Annotated[str, Field(pattern=DEVICE_NAME_PATTERN)]],
                            Field(max_length=MAX_LIGHTS)] | None = None

    def alarm_light_names(self, lights: Iterable[str]) -> list[str]:
        """The configured lights a panic alarm drives."""
        names = list(lights)
        if self.alarm_lights is not None:
            return [n for n in self.alarm_lights if n in names]
        return ["warning"] if "warning" in names else []


# -- [patrol] ------------------------------------------------------------------------


class PatrolSection(Section):
    visit_gap_s: int = Field(default=60, ge=1, le=3600)
    min_people: int = Field(default=2, ge=1, le=20)
    windows: dict[Annotated[str, Field(pattern=DEVICE_NAME_PATTERN)], str] = Field(
        default_factory=lambda: {
            "day1": "08:30-11:20", "day2": "13:00-17:30",
            "evening": "20:00-22:30", "night": "23:00-05:00",
        },
        max_length=MAX_WINDOWS,
    )
    round_every_min: dict[Level, Annotated[int, Field(ge=1, le=1440)]] = Field(
        default_factory=lambda: {3: 120, 2: 60, 1: 30}
    )

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: dict[str, str]) -> dict[str, str]:
        return check_windows(value)

    @field_validator("round_every_min", mode="before")
    @classmethod
    def _level_keys(cls, value: Any) -> Any:
        return int_keys(value)


class DutySection(Section):
    """Kiosks and checkpoints: a tap toggles that badge on or off duty (docs/patrol.md)."""

    # One badge going off and another coming on within this long is a handover.
    handover_gap_s: int = Field(default=600, ge=0, le=86400)
    # The same badge again within this long of its last toggle is a repeat, not a toggle
    # (a double tap must not put a guard straight back off duty).
    repeat_s: int = Field(default=10, ge=0, le=600)


# -- [gnss], [vehicle] ------------------------------------------------------------------


class GnssSection(Section):
    """A GNSS (BeiDou/GPS) receiver: positions for a vehicle, time for any unit
    (docs/vehicle.md)."""

    # A pyserial URL for a receiver speaking NMEA 0183 (/dev/serial0, /dev/ttyACM0, …), or
    # gpsd://host:port to read gpsd (which then owns the receiver).
    source: str = Field(min_length=1)
    baud: Literal[4800, 9600, 19200, 38400, 57600, 115200] = 9600
    # While the system clock is not synchronised, take the time from a valid fix.
    time: bool = True
    # Fixes with a worse HDOP are not used for tracks or visits.
    max_hdop: float = Field(default=5.0, gt=0, le=50)

    @field_validator("source")
    @classmethod
    def _gpsd_form(cls, value: str) -> str:
        if value.startswith("gpsd:") and not value.startswith("gpsd://"):
            raise ValueError(f"gpsd source must look like gpsd://127.0.0.1:2947, got {value!r}")
        return value


class VehicleSection(Section):
    """Patrol vehicles: how tracks are thinned and geofence visits made (docs/vehicle.md)."""

    # A track point at most this often while moving …
    track_every_s: int = Field(default=15, ge=1, le=3600)
    # … and only after moving this far from the last one;
    track_min_move_m: int = Field(default=50, ge=0, le=100_000)
    # standing still, one point this often all the same.
    track_idle_s: int = Field(default=300, ge=10, le=86400)
    # Time inside a point's radius (with a crew on duty) that makes a visit, unless the
    # point says otherwise.
    dwell_s: int = Field(default=60, ge=1, le=3600)
    # A stay ends this far outside the radius (so GNSS jitter at the edge is no exit).
    exit_margin_m: int = Field(default=20, ge=0, le=1000)
    # A stay also ends when there has been no usable fix for this long.
    lost_fix_s: int = Field(default=120, ge=5, le=3600)


def vehicle_problems(data: Mapping[str, Any]) -> list[str]:
    """Rules of the vehicle unit that span sections, on the document as read."""
    problems: list[str] = []
    kind = _table(data.get("unit")).get("kind", "patrol_point")
    if kind == "vehicle" and data.get("gnss") is None:
        problems.append('gnss: a unit of kind "vehicle" needs a [gnss] receiver')
    for name, light in _table(data.get("lights")).items():
        if _table(light).get("schedule") == "on-duty" and kind == "patrol_point":
            problems.append(f'lights.{_key(name)}.schedule: "on-duty" needs a unit with duty '
                            '(kiosk, checkpoint or vehicle), not a patrol_point')
    return problems


# -- [[cameras]] ------------------------------------------------------------------------


#: A mask's corner: x and y as fractions of the frame's width and height (0,0 top left).
MaskPoint = Annotated[list[Annotated[float, Field(ge=0, le=1)]],
                      Field(min_length=2, max_length=2)]
CameraCodec = Literal["mjpeg", "mp4v"]


class CameraConfig(Section):
    """One camera (docs/camera.md explains each group of keys)."""

    name: str = Field(pattern=DEVICE_NAME_PATTERN)
    source: str = Field(min_length=1)
    # No frame for this long means the camera is offline.
    stall_s: float = Field(default=5.0, gt=0, le=300)
    # Frames analysed and recorded per second, at most (the camera may send more).
    fps: float = Field(default=10.0, gt=0, le=60)
    # Resolution to ask a USB/V4L2 camera for (MJPEG); None: the camera's default.
    width: int | None = Field(default=None, ge=160, le=4096)
    height: int | None = Field(default=None, ge=120, le=4096)
    # -- motion (camera/motion.py) --
    motion_rows: int = Field(default=100, ge=40, le=480)
    motion_threshold: int = Field(default=25, ge=1, le=255)
    motion_min_area: float = Field(default=0.001, gt=0, le=1)
    motion_frames: int = Field(default=3, ge=1, le=100)
    background_s: float = Field(default=5.0, gt=0, le=3600)
    global_change: float = Field(default=0.6, gt=0, le=1)
    masks: list[Annotated[list[MaskPoint], Field(min_length=3, max_length=MAX_MASK_CORNERS)]] \
        = Field(default_factory=list, max_length=MAX_MASKS)
    sensitivity: dict[Level, Annotated[float, Field(gt=0, le=10)]] = Field(
        default_factory=lambda: {3: 1.0, 2: 1.25, 1: 1.5}
    )
    # -- recording (camera/recorder.py) --
    pre_roll_s: float = Field(default=5.0, ge=0, le=60)
    post_roll_s: float = Field(default=5.0, ge=0, le=300)
    max_clip_s: float = Field(default=300.0, ge=5, le=3600)
    codec: CameraCodec = "mjpeg"
    jpeg_quality: int = Field(default=80, ge=30, le=100)
    continuous_levels: list[Level] = Field(default_factory=lambda: [1], max_length=3)
    segment_s: float = Field(default=60.0, ge=5, le=3600)
    clip_s: int = Field(default=30, ge=1, le=600)
    alarm_clip_s: int = Field(default=30, ge=0, le=600)
    checkin_snapshots: bool = True
    # -- tamper (camera/tamper.py) --
    tamper: bool = True
    tamper_confirm_s: float = Field(default=3.0, ge=0.2, le=600)
    tamper_learn_s: float = Field(default=10.0, ge=0, le=3600)
    defocus_ratio: float = Field(default=0.35, gt=0, lt=1)
    moved_match: float = Field(default=0.3, gt=0, lt=1)
    frozen_s: float = Field(default=10.0, ge=1, le=3600)
    # -- storage (camera/retention.py) --
    quota_mb: int = Field(default=4096, ge=1)
    max_age_days: float = Field(default=14.0, gt=0, le=3650)
    reserve_mb: int = Field(default=512, ge=0)
    # -- isolation (camera/daemon.py) --
    memory_mb: int = Field(default=400, ge=64, le=65536)
    hang_s: float = Field(default=20.0, ge=2, le=600)

    @field_validator("sensitivity", mode="before")
    @classmethod
    def _level_keys(cls, value: Any) -> Any:
        return int_keys(value)

    @model_validator(mode="after")
    def _clip_lengths(self) -> CameraConfig:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together: set both or neither")
        for key in ("pre_roll_s", "post_roll_s"):
            if getattr(self, key) >= self.max_clip_s:
                raise ValueError(f"{key} ({getattr(self, key)}) must be below max_clip_s "
                                 f"({self.max_clip_s})")
        return self


# -- [journal] ------------------------------------------------------------------------


class JournalSection(Section):
    # Acknowledged events older than this are pruned; unacknowledged never.
    retention_days: float = Field(default=30, gt=0, le=3650)
    # Acknowledged events are pruned, oldest first, past this size.
    max_mb: int = Field(default=256, ge=1, le=1_000_000)
    prune_every_s: int = Field(default=600, ge=10, le=86400)


# -- [time] ------------------------------------------------------------------------------


class TimeSection(Section):
    """What the install script writes into chrony's config (firmware_py/timesync.py)."""

    # Empty: chrony's own servers (Debian's pool), which a closed network cannot reach.
    ntp_servers: list[Annotated[str, Field(pattern=HOST_PATTERN)]] = Field(
        default_factory=list, max_length=16)
    # A GNSS receiver through gpsd: its SHM refclock and PPS socket.
    gnss_refclock: bool = False
    gnss_device: str = Field(default=DEFAULT_GNSS_DEVICE, pattern=DEVICE_PATTERN)


# -- the whole file ---------------------------------------------------------------------


class UnitConfig(Section):
    unit: UnitSection
    mqtt: MqttSection = Field(default_factory=MqttSection)
    security: SecuritySection = Field(default_factory=SecuritySection)
    journal: JournalSection = Field(default_factory=JournalSection)
    readers: list[ReaderConfig] = Field(default_factory=list, max_length=MAX_READERS)
    feedback: FeedbackSection = Field(default_factory=FeedbackSection)
    lights: dict[Annotated[str, Field(pattern=DEVICE_NAME_PATTERN)], LightConfig] = Field(
        default_factory=dict, max_length=MAX_LIGHTS
    )
    inputs: InputsSection = Field(default_factory=InputsSection)
    patrol: PatrolSection = Field(default_factory=PatrolSection)
    duty: DutySection = Field(default_factory=DutySection)
    cameras: list[CameraConfig] = Field(default_factory=list, max_length=MAX_CAMERAS)
    gnss: GnssSection | None = None
    vehicle: VehicleSection = Field(default_factory=VehicleSection)
    time: TimeSection = Field(default_factory=TimeSection)

    # Filled by load_config: where the file came from and the hash of its bytes.
    source_path: FilePath | None = Field(default=None, exclude=True)
    sha256: str = Field(default="", exclude=True)

    @property
    def journal_path(self) -> Path:
        return self.unit.data_dir / "journal.db"

    def cross_problems(self) -> list[str]:
        """Rules that span sections; each problem names every key involved."""
        return cross_problems(self.model_dump())


def _table(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _array(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def cross_problems(data: Mapping[str, Any]) -> list[str]:
    """Rules that span sections, on the document as read (so they are reported beside
    the problems of single keys); values that break their own key's rule are skipped."""
    problems: list[str] = []
    pins: dict[int, str] = {}

    def claim(pin: Any, where: str) -> None:
        if type(pin) is not int or not 2 <= pin <= 27:
            return  # absent, or wrong by itself (its own line says so)
        if pin in pins:
            problems.append(f"{where}: GPIO{pin} is already used by {pins[pin]}")
        else:
            pins[pin] = where

    unit, feedback, inputs = (_table(data.get(k)) for k in ("unit", "feedback", "inputs"))
    lights = _table(data.get("lights"))
    readers, cameras = _array(data.get("readers")), _array(data.get("cameras"))
    for name in ("ok_led", "error_led", "buzzer"):
        claim(feedback.get(name), f"feedback.{name}")
    for light_name, light in lights.items():
        light = _table(light)
        for i, pin in enumerate(_array(light.get("pins"))):
            claim(pin, f"lights.{_key(light_name)}.pins[{i}]")
        if light.get("schedule") == "sunset-sunrise" and unit.get("latitude") is None:
            problems.append(f"lights.{_key(light_name)}.schedule: \"sunset-sunrise\" needs "
                            "unit.latitude and unit.longitude")
    for i, name in enumerate(_array(inputs.get("alarm_lights"))):
        if isinstance(name, str) and name not in lights:
            problems.append(f"inputs.alarm_lights[{i}]: no light {name!r} in [lights.*] "
                            f"(has: {', '.join(map(_key, lights)) or 'none'})")
    claim(inputs.get("panic"), "inputs.panic")
    claim(inputs.get("tamper"), "inputs.tamper")
    for i, reader in enumerate(readers):
        claim(_table(reader).get("power_pin"), f"readers[{i}].power_pin")
    for label, items in (("readers", readers), ("cameras", cameras)):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            name = _table(item).get("name")
            if not isinstance(name, str):
                continue
            if name in seen:
                problems.append(f"{label}[{i}].name: {name!r} is already the name of "
                                f"{label}[{seen[name]}]")
            seen.setdefault(name, i)
    problems += vehicle_problems(data)
    return problems


# -- loading and error formatting ---------------------------------------------------------


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
#: Longest piece of a value or key an error message quotes.
_QUOTE_CHARS = 40


def _key(part: str) -> str:
    """A key as TOML writes it: bare when it can be, else quoted (escapes shown, cut short)."""
    if _BARE_KEY.match(part) and len(part) <= _QUOTE_CHARS:
        return part
    return _quote(part)


def _quote(text: str) -> str:
    """A string as a message may show it: JSON-quoted, cut short, no control characters."""
    cut = text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "…"
    quoted = json.dumps(cut, ensure_ascii=False)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in quoted)


_UNION_TAG = re.compile(r"^(\[key\]|function-.*|[a-z][a-z_-]*\[.*\])$", re.DOTALL)


def _is_union_tag(part: str) -> bool:
    # pydantic labels union members ("literal['always','never']", "list[str]") and dict
    # keys ("[key]") in an error's location; they are not keys of the file.
    return bool(_UNION_TAG.match(part))


def key_path(loc: tuple[Any, ...]) -> str:
    """``("readers", 0, "baud")`` → ``readers[0].baud``; drops pydantic's union branch tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _is_union_tag(part):
            continue
        else:
            out += f".{_key(str(part))}" if out else _key(str(part))
    return out or "(top level)"


def _doc_path(loc: tuple[str | int, ...]) -> str:
    """A place in the document as read (no pydantic labels to drop)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{_key(part)}" if out else _key(part))
    return out or "(top level)"


def _found(value: Any) -> str:
    if isinstance(value, str):
        if len(value) <= _QUOTE_CHARS:
            return _quote(value)
        return f"{_quote(value)} ({len(value)} characters)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        if len(value) <= 8 and all(isinstance(v, int | float | bool) for v in value):
            return f"a list {value!r}"
        return "a list"
    return repr(value)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the table at ``loc`` may hold, from the models (for "did you mean")."""
    annotation: Any = UnitConfig
    for part in loc:
        if isinstance(part, str) and _is_union_tag(part):
            continue
        annotation = _unwrap(annotation, part)
        if annotation is None:
            return []
    model = _unwrap(annotation, None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [name for name, field in model.model_fields.items() if not field.exclude]
    return []


def _unwrap(annotation: Any, part: Any) -> Any:
    """The annotation one step down from ``annotation`` at ``part`` (None: a model itself)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0], part)
    if origin in (Union, types.UnionType):
        for member in get_args(annotation):
            if member is not type(None) and (found := _unwrap(member, part)) is not None:
                return found
        return None
    if part is None:
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return None if field is None else field.annotation
    if origin is list and isinstance(part, int):
        return get_args(annotation)[0]
    if origin is dict:
        return get_args(annotation)[1]
    return None


def describe_error(err: dict[str, Any]) -> str:
    """One pydantic error → ``key.path: what was expected, got what``."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    found = err.get("input")
    if kind == "extra_forbidden":
        loc = tuple(err["loc"])
        unknown = loc[-1] if loc and isinstance(loc[-1], str) else ""
        close = difflib.get_close_matches(unknown, _known_keys(loc[:-1]), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"unknown key{hint} (see docs/configuration.md)"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        options = ", ".join(p.strip().replace("'", '"') for p in re.split(r",| or ", expected) if p)
        return f"must be one of {options}, got {_found(found)}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {_found(found)}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        word = {"greater_than_equal": "at least", "less_than_equal": "at most",
                "greater_than": "more than", "less_than": "less than"}[kind]
        limit = next(iter(ctx.values()), "?")
        return f"must be {word} {limit}, got {_found(found)}"
    if kind in ("too_short", "too_long"):
        word, limit = ("at least", ctx.get("min_length")) if kind == "too_short" else \
            ("at most", ctx.get("max_length"))
        actual = ctx.get("actual_length")
        if actual is None:
            actual = len(found) if isinstance(found, list | dict) else "?"
        return f"{word} {limit} item{'' if limit == 1 else 's'}, got {actual}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind.endswith("_type") or kind.endswith("_parsing"):
        want = kind.removesuffix("_type").removesuffix("_parsing").replace("_", " ")
        return f"expected {want}, got {_found(found)} ({type(found).__name__})"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_found(found)}"


def _wrong_branch(err: dict[str, Any]) -> bool:
    """An error of a union member the value plainly is not (a list tried as a word)."""
    kind, found = err["type"], err.get("input")
    if kind.endswith("_type"):
        return True
    return kind == "literal_error" and isinstance(found, list | dict)


def problems_of(error: ValidationError) -> list[str]:
    errors = error.errors(include_url=False)
    # A value tried against each member of a union fails each: where one member's
    # complaint is about the value itself, the others' "not my type" lines are noise.
    branch_paths = {key_path(tuple(e["loc"])) for e in errors
                    if any(isinstance(p, str) and _is_union_tag(p) for p in e["loc"])
                    and not _wrong_branch(e)}
    lines: list[str] = []
    seen: set[str] = set()
    for err in errors:
        path = key_path(tuple(err["loc"]))
        if path in branch_paths and _wrong_branch(err) and \
                any(isinstance(p, str) and _is_union_tag(p) for p in err["loc"]):
            continue
        line = f"{path}: {describe_error(err)}"
        # A value failing every branch of a union repeats itself: keep each line once.
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


def shape_problem(data: Mapping[str, Any]) -> str | None:
    """The first table or array nested deeper than MAX_DEPTH or longer than MAX_ENTRIES.

    Checked before anything else looks at the document, so nothing after it walks
    a deep or huge structure (and a hostile one gets one line, not thousands).
    """
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if not isinstance(value, dict | list):
            continue
        if len(loc) > MAX_DEPTH:
            return (f"{_doc_path(loc)}: nested too deeply (at most {MAX_DEPTH} levels of "
                    "tables and arrays)")
        if len(value) > MAX_ENTRIES:
            return f"{_doc_path(loc)}: at most {MAX_ENTRIES} entries, got {len(value)}"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend(reversed([((*loc, k), v) for k, v in items]))
    return None


#: UnitConfig fields that load_config fills; never keys of the file.
_INTERNAL_FIELDS = ("source_path", "sha256")


def _validate(data: Mapping[str, Any]) -> tuple[UnitConfig | None, list[str]]:
    """The config and every problem: those of single keys, then those across keys."""
    shape = shape_problem(data)
    if shape is not None:
        return None, [shape]
    problems = [f"{_key(k)}: unknown key (see docs/configuration.md)"
                for k in _INTERNAL_FIELDS if k in data]
    cfg: UnitConfig | None = None
    try:
        cfg = UnitConfig.model_validate({k: v for k, v in data.items()
                                         if k not in _INTERNAL_FIELDS})
    except ValidationError as err:
        problems += problems_of(err)
    problems += cross_problems(data)
    return (None if problems else cfg), problems


def parse_config(data: dict[str, Any], source: str = "<config>") -> UnitConfig:
    """Validate an already-parsed TOML document; raise :class:`ConfigInvalid`."""
    cfg, problems = _validate(data)
    if cfg is None:
        raise ConfigInvalid(source, problems)
    return cfg


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_config_bytes(path: Path) -> bytes:
    """The file's bytes, if it is a regular file of at most MAX_CONFIG_BYTES.

    Opened non-blocking, so a FIFO or a device is refused instead of waited on,
    and never read past the limit (``-c /dev/zero`` must not fill the memory).
    """
    def unreadable(why: str) -> ConfigUnreadable:
        return ConfigUnreadable(f"{path}: cannot read config: {why}")

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise unreadable(err.strerror or str(err)) from err
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise unreadable(f"{_file_kind(mode)}, not a file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise unreadable(f"larger than {MAX_CONFIG_BYTES // 1024} KiB (a unit's config "
                             "is a few KiB)")
        return b"".join(chunks)
    except ConfigUnreadable:
        raise
    except OSError as err:  # EIO from a failing card, EISDIR from an odd filesystem
        raise unreadable(err.strerror or str(err)) from err
    finally:
        os.close(fd)


def parse_toml(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigUnreadable(f"{path}: not UTF-8 text: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigUnreadable(f"{path}: not valid TOML: {err}") from err
    except RecursionError:
        # tomllib recurses once per level: a hostile file runs out of stack, not memory.
        raise ConfigUnreadable(f"{path}: not valid TOML: tables or arrays nested too "
                               f"deeply (at most {MAX_DEPTH} levels)") from None


def _resolved(value: Any, base: Path) -> Path | None:
    if not isinstance(value, str) or not value or "\0" in value:
        return None
    p = Path(value)
    return p if p.is_absolute() else (base / p).resolve()


def _directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a directory: itself or a parent is a file."""
    for candidate in (path, *path.parents):
        try:
            mode = candidate.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # the first part that exists says
        except OSError:
            return None  # not ours to judge here (permissions): the daemon will say
        if stat.S_ISDIR(mode):
            return None
        what = "a file" if stat.S_ISREG(mode) else _file_kind(mode)
        return f"{candidate} is {what}, not a directory"
    return None


def directory_problems(data: Mapping[str, Any], base: Path) -> list[str]:
    """``unit.data_dir`` and ``unit.runtime_dir`` must be directories or be creatable."""
    unit = _table(data.get("unit"))
    problems: list[str] = []
    for key, default in (("data_dir", UnitSection.model_fields["data_dir"].default),
                         ("runtime_dir", UnitSection.model_fields["runtime_dir"].default)):
        path = _resolved(unit.get(key, str(default)), base)
        if path is not None and (why := _directory_problem(path)) is not None:
            problems.append(f"unit.{key}: {why}")
    return problems


def file_problems(data: Mapping[str, Any], base: Path) -> list[str]:
    """Files the config names that this user cannot read: ``mqtt.password_file`` and
    ``mqtt.tls.{ca,cert,key}`` (``config check``; the daemons start without them)."""
    mqtt = _table(data.get("mqtt"))
    tls = _table(mqtt.get("tls"))
    named = [("mqtt.password_file", mqtt.get("password_file"))]
    named += [(f"mqtt.tls.{k}", tls.get(k)) for k in ("ca", "cert", "key")]
    problems: list[str] = []
    for key, value in named:
        path = _resolved(value, base)
        if path is None:
            continue
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                problems.append(f"{key}: {path} is {_file_kind(mode)}, not a file")
                continue
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC))
        except FileNotFoundError:
            problems.append(f"{key}: {path} does not exist")
        except OSError as err:
            problems.append(f"{key}: {path} is not readable ({err.strerror or err})")
    return problems


def load_config(path: str | Path, *, check_files: bool = False) -> UnitConfig:
    """Read, parse and validate a unit config file.

    ``check_files`` also requires the credential files it names to be readable
    (``xunfang config check``); the daemons do not, so a missing certificate
    never stops the station.
    """
    path = Path(path)
    raw = read_config_bytes(path)
    data = parse_toml(raw, path)
    cfg, problems = _validate(data)
    problems += directory_problems(data, path.parent)
    if check_files:
        problems += file_problems(data, path.parent)
    if cfg is None or problems:
        raise ConfigInvalid(str(path), problems)
    return resolve_paths(cfg, path.parent).model_copy(update={
        "source_path": path,
        "sha256": hashlib.sha256(raw).hexdigest(),
    })


def resolve_paths(cfg: UnitConfig, base: Path) -> UnitConfig:
    """Relative file paths in a config are relative to the config file's folder."""

    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else (base / p).resolve()

    unit = cfg.unit.model_copy(update={
        k: v for k, v in (("data_dir", fix(cfg.unit.data_dir)),
                          ("runtime_dir", fix(cfg.unit.runtime_dir))) if v is not None
    })
    mqtt = cfg.mqtt
    updates: dict[str, Any] = {}
    if (pw := fix(mqtt.password_file)) is not None:
        updates["password_file"] = pw
    if mqtt.tls is not None:
        tls_updates = {k: v for k in ("ca", "cert", "key")
                       if (v := fix(getattr(mqtt.tls, k))) is not None}
        if tls_updates:
            updates["tls"] = mqtt.tls.model_copy(update=tls_updates)
    if updates:
        mqtt = mqtt.model_copy(update=updates)
    return cfg.model_copy(update={"unit": unit, "mqtt": mqtt})
