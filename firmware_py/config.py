"""The unit's configuration: one TOML file, validated before anything starts.

The contract is ``docs/configuration.md``. Every rule lives in the pydantic
models below; :func:`load_config` turns their errors into one line per problem
with its key path, what was expected and what was found, e.g.::

    readers[0].baud: must be one of 9600, 19200, 38400, 57600, 115200, got 9601

Unknown keys are errors (a typo must not be silently ignored).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
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


def _int_keys(value: Any) -> Any:
    """TOML table keys are strings (``{ 3 = 120 }`` reads as ``{"3": 120}``): levels are ints."""
    if isinstance(value, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value.items()}
    return value


# -- [unit] -------------------------------------------------------------------------


class UnitSection(Section):
    id: str = Field(pattern=NAME_PATTERN)
    site: str = Field(pattern=NAME_PATTERN)
    kind: Literal["patrol_point", "kiosk", "checkpoint"]
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
    command_keys: dict[KeyName, PublicKey] = Field(default_factory=dict)
    ack_keys: dict[KeyName, PublicKey] = Field(default_factory=dict)

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


class FeedbackSection(Section):
    ok_led: GpioPin | None = None
    error_led: GpioPin | None = None
    buzzer: GpioPin | None = None


class LightConfig(Section):
    pins: list[GpioPin] = Field(min_length=1, max_length=2)
    active_high: bool = True
    schedule: Literal["sunset-sunrise", "always", "never"] | list[str] = "never"
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
        return _int_keys(value)

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
    alarm_lights: list[Annotated[str, Field(pattern=DEVICE_NAME_PATTERN)]] | None = None

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
        }
    )
    round_every_min: dict[Level, Annotated[int, Field(ge=1, le=1440)]] = Field(
        default_factory=lambda: {3: 120, 2: 60, 1: 30}
    )

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: dict[str, str]) -> dict[str, str]:
        for name, window in value.items():
            try:
                parse_window(window)
            except ValueError as err:
                raise ValueError(f"window {name!r}: {err}") from None
        return value

    @field_validator("round_every_min", mode="before")
    @classmethod
    def _level_keys(cls, value: Any) -> Any:
        return _int_keys(value)


class DutySection(Section):
    """Kiosks and checkpoints: a tap toggles that badge on or off duty (docs/patrol.md)."""

    # One badge going off and another coming on within this long is a handover.
    handover_gap_s: int = Field(default=600, ge=0, le=86400)
    # The same badge again within this long of its last toggle is a repeat, not a toggle
    # (a double tap must not put a guard straight back off duty).
    repeat_s: int = Field(default=10, ge=0, le=600)


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
    masks: list[Annotated[list[MaskPoint], Field(min_length=3)]] = Field(default_factory=list)
    sensitivity: dict[Level, Annotated[float, Field(gt=0, le=10)]] = Field(
        default_factory=lambda: {3: 1.0, 2: 1.25, 1: 1.5}
    )
    # -- recording (camera/recorder.py) --
    pre_roll_s: float = Field(default=5.0, ge=0, le=60)
    post_roll_s: float = Field(default=5.0, ge=0, le=300)
    max_clip_s: float = Field(default=300.0, ge=5, le=3600)
    codec: CameraCodec = "mjpeg"
    jpeg_quality: int = Field(default=80, ge=30, le=100)
    continuous_levels: list[Level] = Field(default_factory=lambda: [1])
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
        return _int_keys(value)

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
    readers: list[ReaderConfig] = Field(default_factory=list)
    feedback: FeedbackSection = Field(default_factory=FeedbackSection)
    lights: dict[Annotated[str, Field(pattern=DEVICE_NAME_PATTERN)], LightConfig] = Field(
        default_factory=dict
    )
    inputs: InputsSection = Field(default_factory=InputsSection)
    patrol: PatrolSection = Field(default_factory=PatrolSection)
    duty: DutySection = Field(default_factory=DutySection)
    cameras: list[CameraConfig] = Field(default_factory=list)
    time: TimeSection = Field(default_factory=TimeSection)

    # Filled by load_config: where the file came from and the hash of its bytes.
    source_path: FilePath | None = Field(default=None, exclude=True)
    sha256: str = Field(default="", exclude=True)

    @property
    def journal_path(self) -> Path:
        return self.unit.data_dir / "journal.db"

    def cross_problems(self) -> list[str]:
        """Rules that span sections; each problem names every key involved."""
        problems: list[str] = []
        pins: dict[int, str] = {}

        def claim(pin: int | None, where: str) -> None:
            if pin is None:
                return
            if pin in pins:
                problems.append(f"{where}: GPIO{pin} is already used by {pins[pin]}")
            else:
                pins[pin] = where

        for name in ("ok_led", "error_led", "buzzer"):
            claim(getattr(self.feedback, name), f"feedback.{name}")
        for light_name, light in self.lights.items():
            for i, pin in enumerate(light.pins):
                claim(pin, f"lights.{light_name}.pins[{i}]")
            if light.schedule == "sunset-sunrise" and self.unit.latitude is None:
                problems.append(f"lights.{light_name}.schedule: \"sunset-sunrise\" needs "
                                "unit.latitude and unit.longitude")
        for i, name in enumerate(self.inputs.alarm_lights or []):
            if name not in self.lights:
                problems.append(f"inputs.alarm_lights[{i}]: no light {name!r} in [lights.*] "
                                f"(has: {', '.join(self.lights) or 'none'})")
        claim(self.inputs.panic, "inputs.panic")
        claim(self.inputs.tamper, "inputs.tamper")
        for i, reader in enumerate(self.readers):
            claim(reader.power_pin, f"readers[{i}].power_pin")
        for label, items in (("readers", self.readers), ("cameras", self.cameras)):
            seen: dict[str, int] = {}
            for i, item in enumerate(items):
                if item.name in seen:
                    problems.append(f"{label}[{i}].name: {item.name!r} is already the name of "
                                    f"{label}[{seen[item.name]}]")
                seen.setdefault(item.name, i)
        return problems


# -- loading and error formatting ---------------------------------------------------------


def key_path(loc: tuple[Any, ...]) -> str:
    """``("readers", 0, "baud")`` → ``readers[0].baud``; drops pydantic's union branch tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part.startswith(("function-", "literal["))):
            continue  # union member labels such as "literal['always','never']" or "list[str]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _found(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"a list {value!r}" if len(repr(value)) < 60 else "a list"
    return repr(value)


def describe_error(err: dict[str, Any]) -> str:
    """One pydantic error → ``key.path: what was expected, got what``."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    found = err.get("input")
    if kind == "extra_forbidden":
        return "unknown key (misspelt? see docs/configuration.md)"
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
        return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_found(found)}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind.endswith("_type") or kind.endswith("_parsing"):
        want = kind.removesuffix("_type").removesuffix("_parsing").replace("_", " ")
        return f"expected {want}, got {_found(found)} ({type(found).__name__})"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_found(found)}"


def problems_of(error: ValidationError) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for err in error.errors(include_url=False):
        path = key_path(tuple(err["loc"]))
        line = f"{path}: {describe_error(err)}"
        # A value failing every branch of a union repeats itself: keep each line once.
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


def parse_config(data: dict[str, Any], source: str = "<config>") -> UnitConfig:
    """Validate an already-parsed TOML document; raise :class:`ConfigInvalid`."""
    try:
        cfg = UnitConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigInvalid(source, problems_of(err)) from None
    cross = cfg.cross_problems()
    if cross:
        raise ConfigInvalid(source, cross)
    return cfg


def load_config(path: str | Path) -> UnitConfig:
    """Read, parse and validate a unit config file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigUnreadable(f"{path}: cannot read config: {err.strerror or err}") from err
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigUnreadable(f"{path}: not UTF-8 text: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigUnreadable(f"{path}: not valid TOML: {err}") from err
    cfg = parse_config(data, str(path))
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
