#!/usr/bin/env bash
# One set-up for the demo and the tests on a fresh Debian machine: system
# packages (Mosquitto, NATS, Python venv) when missing, then a virtual
# environment in .venv with the project installed in it. Idempotent: a second
# run only checks.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need_apt+=(mosquitto mosquitto-clients)
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
# Loop-mounted ext4 file systems: the full-disk tests.
command -v mkfs.ext4 >/dev/null || [ -x /sbin/mkfs.ext4 ] || need_apt+=(e2fsprogs)
# gpsd, and gpsfake (in gpsd-clients) to replay receiver captures through it.
[ -x /usr/sbin/gpsd ] || need_apt+=(gpsd)
command -v gpsfake >/dev/null || need_apt+=(gpsd-clients)
# The centre's report is checked in a real browser; Chinese needs a CJK font.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need_apt+=(fonts-noto-cjk)
# The partition fault test puts the uplink in a network namespace (ip netns, veth).
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need_apt+=(iproute2)
# The ledger's PostgreSQL backend: tests start their own server (initdb, pg_ctl).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
# The time tests check the chrony snippet the install script writes with chronyd itself.
[ -x /usr/sbin/chronyd ] || need_apt+=(chrony)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} from Debian's packages" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# A Debian package may start its own broker on 1883; our demo and tests use
# private brokers on free ports, so that one is left alone.

stamp=.venv/.installed
want=$(sha256sum < pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: creating .venv and installing xunfang with its test tools" >&2
    python3 -m venv .venv
    log=.venv/install.log
    if ! { .venv/bin/python -m pip install --upgrade pip \
           && .venv/bin/python -m pip install -e '.[test]'; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "setup: pip install failed, full log in $here/$log" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
