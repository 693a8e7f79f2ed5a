#!/usr/bin/env bash
# Install (or upgrade) xunfang on a unit: Raspberry Pi OS or Debian 12, as root.
#
#   sudo ./systemd/install.sh                          install, start if configured
#   sudo ./systemd/install.sh --config zt-pp-03.toml   ... with this unit's config
#   sudo ./systemd/install.sh --no-start               install, enable, start nothing
#   ./systemd/install.sh --dry-run                     print every step, change nothing
#   DESTDIR=/tmp/root ./systemd/install.sh             stage the files under a root
#
# What it does (docs/operations.md explains each step):
#   1. apt: python3, python3-venv, a time daemon if there is none (and a
#      compiler and swig on 32-bit ARM, where lgpio may have to be built);
#   2. the system user and group `xunfang` (no login, home /var/lib/xunfang),
#      and the group `gpio` if it is missing. The user is NOT put in dialout,
#      gpio or video: each service gets the device groups it needs from its
#      unit (SupplementaryGroups=), so the uplink has none;
#   3. the virtual environment /opt/xunfang/VERSION with xunfang from this
#      source tree (and lgpio, gpiozero's pin library, on ARM), and the link
#      /opt/xunfang/current to it (through systemd/xunfang-update);
#   4. the systemd units and target in /etc/systemd/system, the udev rules
#      in /etc/udev/rules.d, the docs and examples in /usr/share/doc/xunfang,
#      /usr/local/bin/xunfang (a link to current/bin/xunfang) and
#      /usr/local/sbin/xunfang-update (updates with rollback) with its
#      Chinese messages in /usr/local/share/locale;
#   5. /etc/xunfang/unit.toml (0640 root:xunfang): from --config FILE, or, when
#      there is none yet, a copy of the example for --kind (patrol-point);
#      an existing config is never overwritten without --config;
#   6. `xunfang config check` as the xunfang user (so it proves the daemons
#      can read the file); a bad config stops the install here (exit 2);
#   7. systemctl daemon-reload, enable the three services and xunfang.target,
#      and start them, unless --no-start, or the config is still the
#      untouched example (edit it, then `systemctl enable --now xunfang.target`).
#
# DESTDIR=DIR installs the files of steps 4 and 5 under DIR and prints, without
# doing them, the steps that act on this machine (apt, users, the venv: a venv
# cannot be moved after it is made, udev, config check, systemctl).
# --dry-run prints every step and changes nothing at all.
set -euo pipefail
# Whatever the installer's shell had: the venv and docs must be readable by
# the xunfang user (files that must not be, the config, get explicit modes).
umask 022

# Debian's Python (the one apt installs), never one from a user's PATH: the
# venv points at it for good, and the daemons must be able to run it.
PYTHON=${PYTHON:-/usr/bin/python3}
PREFIX=/opt/xunfang
CURRENT=$PREFIX/current
XUNFANG=$CURRENT/bin/xunfang
CONF_DIR=/etc/xunfang
CONF=$CONF_DIR/unit.toml
UNIT_DIR=/etc/systemd/system
UDEV_DIR=/etc/udev/rules.d
DOC_DIR=/usr/share/doc/xunfang
USER_NAME=xunfang
UNITS=(xunfang-station.service xunfang-camera.service xunfang-uplink.service xunfang.target)
SERVICES=(xunfang-station.service xunfang-camera.service xunfang-uplink.service)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}

dry_run=0
start=1
use_apt=1
config_file=""
kind=patrol-point

say() { printf 'xunfang-install: %s\n' "$*"; }
die() { printf 'xunfang-install: error: %s\n' "$1" >&2; exit "${2:-1}"; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    cat <<EOF
Options:
  --config FILE   install FILE as $CONF (the old one is kept as unit.toml.bak-TIME)
  --kind KIND     example to start from when there is no config yet:
                  patrol-point (default), kiosk or checkpoint
  --no-start      install and enable, but start nothing
  --no-apt        do not install Debian packages (they must be there already)
  --dry-run       print what would be done and change nothing
  -h, --help      this text
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --config) [ $# -ge 2 ] || die "--config needs a FILE" 2; config_file=$2; shift 2 ;;
        --config=*) config_file=${1#--config=}; shift ;;
        --kind) [ $# -ge 2 ] || die "--kind needs a KIND" 2; kind=$2; shift 2 ;;
        --kind=*) kind=${1#--kind=}; shift ;;
        --no-start) start=0; shift ;;
        --no-apt) use_apt=0; shift ;;
        --dry-run|-n) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" 2 ;;
    esac
done

case $kind in
    patrol-point|kiosk|checkpoint) ;;
    *) die "--kind must be patrol-point, kiosk or checkpoint, got '$kind'" 2 ;;
esac
example=$src/config/$kind.toml
[ -f "$src/pyproject.toml" ] || die "no pyproject.toml in $src: run the script from a xunfang source tree"
[ -f "$example" ] || die "missing example config $example"
if [ -n "$config_file" ]; then
    [ -f "$config_file" ] || die "--config: no such file: $config_file" 2
    config_file=$(cd "$(dirname "$config_file")" && pwd)/$(basename "$config_file")
fi
if [ -n "$DESTDIR" ]; then
    case $DESTDIR in /*) ;; *) die "DESTDIR must be an absolute path, got '$DESTDIR'" 2 ;; esac
fi
if [ -z "$DESTDIR" ] && [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $0), or use --dry-run or DESTDIR=DIR"
fi

# Run a command, or only print it with --dry-run.
run() {
    if [ "$dry_run" -eq 1 ]; then
        printf '  would run: %s\n' "$*"
    else
        printf '  + %s\n' "$*"
        "$@"
    fi
}

# A step that acts on the running machine: skipped (and printed) under DESTDIR.
machine() {
    if [ -n "$DESTDIR" ]; then
        printf '  skip (DESTDIR): %s\n' "$*"
    else
        run "$@"
    fi
}

# install_file MODE SRC DEST [GROUP]: DEST is a path on the unit (DESTDIR is added).
install_file() {
    local mode=$1 from=$2 to=$DESTDIR$3 group=${4:-root}
    if [ -n "$DESTDIR" ] || [ "$(id -u)" -ne 0 ]; then
        run install -D -m "$mode" "$from" "$to"
    else
        run install -D -m "$mode" -o root -g "$group" "$from" "$to"
    fi
}

# install_dir MODE DIR [GROUP]
install_dir() {
    local mode=$1 dir=$DESTDIR$2 group=${3:-root}
    if [ -n "$DESTDIR" ] || [ "$(id -u)" -ne 0 ]; then
        run install -d -m "$mode" "$dir"
    else
        run install -d -m "$mode" -o root -g "$group" "$dir"
    fi
}

arch=$(uname -m)
if [ -n "$DESTDIR" ]; then say "installing into DESTDIR=$DESTDIR"; fi
if [ "$dry_run" -eq 1 ]; then say "dry run: nothing is changed"; fi
say "source $src, machine $arch"

# -- 1. Debian packages --------------------------------------------------------------------
say "1/7 Debian packages"
pkgs=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in python3 python3-venv; do
    have_pkg "$p" || pkgs+=("$p")
done
# Events say whether the clock was synchronised; a Pi has no RTC, so it needs
# a time daemon. Raspberry Pi OS ships systemd-timesyncd; keep chrony or ntpsec
# when the unit has one.
if ! have_pkg systemd-timesyncd && ! have_pkg chrony && ! have_pkg ntpsec && ! have_pkg ntp; then
    pkgs+=(systemd-timesyncd)
fi
case $arch in
    armv6l|armv7l)
        # 32-bit ARM: PyPI has no lgpio wheel (piwheels, which Raspberry Pi OS's
        # pip uses, may have one); building it needs a compiler and swig.
        for p in gcc python3-dev swig; do have_pkg "$p" || pkgs+=("$p"); done
        say "warning: 32-bit ARM is not the tested platform: pip may have to build" \
            "packages (OpenCV takes hours); use the 64-bit Raspberry Pi OS if you can"
        ;;
esac
if [ "${#pkgs[@]}" -eq 0 ]; then
    say "all present"
elif [ "$use_apt" -eq 0 ]; then
    say "--no-apt: not installing ${pkgs[*]}"
else
    machine apt-get update -qq
    machine env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
if [ -z "$DESTDIR" ] && [ "$dry_run" -eq 0 ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "xunfang needs Python 3.11 or newer (Debian 12 / Raspberry Pi OS bookworm); $PYTHON is $("$PYTHON" -V 2>&1)"
fi

# -- 2. user and groups --------------------------------------------------------------------
say "2/7 user $USER_NAME and groups"
for g in dialout video gpio; do
    if ! getent group "$g" >/dev/null; then
        machine groupadd --system "$g"
    fi
done
if ! getent passwd "$USER_NAME" >/dev/null; then
    machine useradd --system --user-group --home-dir /var/lib/xunfang --no-create-home \
        --shell /usr/sbin/nologin --comment "xunfang unit daemons" "$USER_NAME"
else
    say "user $USER_NAME exists"
fi

# -- 3. virtual environment -----------------------------------------------------------------
# Each version in its own venv, /opt/xunfang/VERSION, and /opt/xunfang/current
# linking to the one in use (the units run current/bin/xunfang). xunfang-update
# makes the venv and switches the link; later updates use it with a rollback.
say "3/7 virtual environment $PREFIX/VERSION, linked from $CURRENT"
if [ -n "$DESTDIR" ]; then
    say "  skip (DESTDIR): a venv cannot be moved once made; build it on the unit"
else
    run install -d -m 0755 "$PREFIX"
    wheels=$(mktemp -d)
    # Expanded now, on purpose: the trap must remove this run's folder.
    # shellcheck disable=SC2064
    trap "rm -rf '$wheels'" EXIT
    # Built from a copy: the build writes into its source folder, and the
    # source may be read-only (a USB stick) or shared with a developer's .venv.
    run mkdir "$wheels/src"
    if [ "$dry_run" -eq 1 ]; then
        printf '  would run: tar -C %s -c . | tar -C %s -x  (without .git, .venv, caches)\n' \
            "$src" "$wheels/src"
    else
        tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./build \
            --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
            --exclude=.ruff_cache --exclude=.hypothesis -cf - . | tar -C "$wheels/src" -xf -
    fi
    # Debian's python3 has no pip: build in a throwaway venv.
    run "$PYTHON" -m venv "$wheels/build"
    run "$wheels/build/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$wheels/src"
    if [ "$dry_run" -eq 1 ]; then
        wheel="$wheels/xunfang-VERSION-py3-none-any.whl"
    else
        wheel=$(find "$wheels" -maxdepth 1 -name 'xunfang-*.whl' | head -n 1)
        [ -n "$wheel" ] || die "pip built no wheel from $src"
    fi
    # Installs with its dependencies (and lgpio on a Pi); the same version
    # again is reinstalled in place. Nothing is restarted here (step 7 does).
    run "$PYTHON" "$here/xunfang-update" --no-restart --python "$PYTHON" "$wheel"
    case $arch in
        aarch64|armv6l|armv7l) ;;
        *) say "  $arch is not a Pi: lgpio not installed (GPIO needs GPIOZERO_PIN_FACTORY=mock here)" ;;
    esac
    if [ -d "$PREFIX/venv" ] && [ ! -L "$PREFIX/venv" ]; then
        say "  $PREFIX/venv (the layout before versions) is no longer used:" \
            "remove it once the services run from $CURRENT (rm -rf $PREFIX/venv)"
    fi
fi

# -- 4. units, udev rules, docs ---------------------------------------------------------------
say "4/7 systemd units, udev rules, docs"
for u in "${UNITS[@]}"; do
    install_file 0644 "$here/$u" "$UNIT_DIR/$u"
done
install_file 0644 "$here/99-xunfang.rules" "$UDEV_DIR/99-xunfang.rules"
for d in operations.md configuration.md; do
    if [ -f "$src/docs/$d" ]; then
        install_file 0644 "$src/docs/$d" "$DOC_DIR/$d"
    fi
done
for f in "$src"/config/*.toml "$here"/examples/*.conf; do
    install_file 0644 "$f" "$DOC_DIR/examples/$(basename "$f")"
done
# `xunfang` on root's PATH, for the installer's checks and the operator's tools.
run install -d -m 0755 "$DESTDIR/usr/local/bin"
run ln -sfn "$XUNFANG" "$DESTDIR/usr/local/bin/xunfang"
# Updates with rollback: xunfang-update FILE.whl (docs/operations.md).
install_file 0755 "$here/xunfang-update" /usr/local/sbin/xunfang-update
# Its messages in Chinese (English is the source text).
install_file 0644 "$here/locale/zh_CN/LC_MESSAGES/xunfang-update.mo" \
    /usr/local/share/locale/zh_CN/LC_MESSAGES/xunfang-update.mo
if [ -n "$DESTDIR" ]; then
    say "  skip (DESTDIR): udevadm control --reload; udevadm trigger"
elif command -v udevadm >/dev/null && [ -d /run/udev ]; then
    run udevadm control --reload
    run udevadm trigger --action=add --subsystem-match=tty --subsystem-match=gpio
else
    say "  udev is not running here: rules apply from the next boot"
fi

# -- 5. the config ------------------------------------------------------------------------------
say "5/7 config $CONF"
install_dir 0750 "$CONF_DIR" "$USER_NAME"
install_dir 0750 "$CONF_DIR/tls" "$USER_NAME"
untouched_example=0
if [ -n "$config_file" ]; then
    if [ -e "$DESTDIR$CONF" ] && ! cmp -s "$config_file" "$DESTDIR$CONF"; then
        run cp -p "$DESTDIR$CONF" "$DESTDIR$CONF.bak-$(date +%Y%m%dT%H%M%S)"
    fi
    install_file 0640 "$config_file" "$CONF" "$USER_NAME"
elif [ -e "$DESTDIR$CONF" ]; then
    say "  keeping the existing $CONF"
    if cmp -s "$example" "$DESTDIR$CONF"; then untouched_example=1; fi
else
    install_file 0640 "$example" "$CONF" "$USER_NAME"
    untouched_example=1
fi

# -- time and watchdog (docs/operations.md, "Time and the watchdog") -------------------
# chrony with the NTP servers (and GNSS receiver) of the config's [time], and
# systemd petting the hardware watchdog. Both files are rendered by
# firmware_py/timesync.py with the system's Python; `xunfang check` compares them.
install_time_and_watchdog() {
    local conf=$DESTDIR$CONF rendered
    say "time: chrony from [time] of $CONF; hardware watchdog through systemd"
    if ! have_pkg chrony; then
        if [ "$use_apt" -eq 1 ]; then
            # chrony replaces systemd-timesyncd (both are the time-daemon).
            machine env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chrony
        else
            say "  --no-apt: chrony is not installed; install it for [time] to take effect"
        fi
    fi
    rendered=$(mktemp -d)
    if [ -f "$conf" ]; then
        if ! "$PYTHON" "$src/firmware_py/timesync.py" chrony "$conf" >"$rendered/chrony.conf"; then
            rm -rf "$rendered"
            die "cannot render the chrony snippet from $CONF (above)" 2
        fi
    else
        "$PYTHON" "$src/firmware_py/timesync.py" chrony "$example" >"$rendered/chrony.conf"
    fi
    "$PYTHON" "$src/firmware_py/timesync.py" watchdog >"$rendered/watchdog.conf"
    install_file 0644 "$rendered/chrony.conf" /etc/chrony/conf.d/xunfang.conf
    install_file 0644 "$rendered/watchdog.conf" /etc/systemd/system.conf.d/xunfang-watchdog.conf
    rm -rf "$rendered"
    if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
        run systemctl daemon-reexec          # systemd reads system.conf.d only then
        if systemctl is-active --quiet chrony; then run systemctl restart chrony; fi
    else
        say "  skip: systemctl daemon-reexec; systemctl restart chrony (not on this machine)"
    fi
}
# -- end of time and watchdog ----------------------------------------------------------

install_time_and_watchdog

# -- 6. config check -------------------------------------------------------------------------
say "6/7 config check"
check=("$XUNFANG" config check -c "$CONF")
# The example names TLS files that are not in place yet: until it is written
# over, check it as the daemons do (without the password and TLS files).
first_check=("${check[@]}")
if [ "$untouched_example" -eq 1 ]; then first_check+=(station); fi
if [ -n "$DESTDIR" ]; then
    say "  skip (DESTDIR): runuser -u $USER_NAME -- ${first_check[*]}"
elif [ "$dry_run" -eq 1 ]; then
    run runuser -u "$USER_NAME" -- "${first_check[@]}"
elif ! runuser -u "$USER_NAME" -- "${first_check[@]}"; then
    die "$CONF has problems (above): fix them, then run: ${check[*]}" 2
fi

# -- 7. systemd ----------------------------------------------------------------------------------
say "7/7 systemd"
if [ -z "$DESTDIR" ] && [ "$dry_run" -eq 0 ] && [ ! -d /run/systemd/system ]; then
    say "  systemd is not running here (chroot or container): enable the units on the unit:"
    say "  systemctl enable --now ${SERVICES[*]} xunfang.target"
    exit 0
fi
machine systemctl daemon-reload
if [ "$untouched_example" -eq 1 ]; then
    say "$CONF is still the $kind example: nothing is enabled or started."
    say "Write this unit's settings into it, then run:"
    say "  ${check[*]}"
    say "  systemctl enable --now ${SERVICES[*]} xunfang.target"
    exit 0
fi
machine systemctl enable "${SERVICES[@]}" xunfang.target
if [ "$start" -eq 1 ]; then
    # restart, not start: an upgrade must replace running daemons.
    machine systemctl restart xunfang.target
    say "started; follow with: journalctl -u 'xunfang-*' -f"
else
    say "--no-start: enabled, not (re)started (systemctl restart xunfang.target)"
fi
