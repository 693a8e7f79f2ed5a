#!/usr/bin/env bash
# The default suite run with the machine loaded, as CI's busy 2-core runners are:
# stress-ng keeps every core busy beside pytest, ROUNDS times in a row (default 3).
# A test that passes only on an idle machine is a race, in the test or the code.
# Extra arguments go to pytest. Installs stress-ng from Debian's packages if missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=${ROUNDS:-3}
cpus=${STRESS_CPUS:-$(nproc)}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
if ! command -v stress-ng >/dev/null; then
    echo "stress-suite: installing stress-ng from Debian's packages" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng >/dev/null
fi
"$here/scripts/setup.sh"
cd "$here"

stress_pid=
stop_stress() { [ -n "$stress_pid" ] && kill "$stress_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap stop_stress EXIT

for round in $(seq 1 "$rounds"); do
    stress-ng --cpu "$cpus" --quiet &
    stress_pid=$!
    echo "stress-suite: round $round of $rounds, stress-ng --cpu $cpus beside the suite" >&2
    if ! .venv/bin/python -m pytest -q -p no:cacheprovider "$@"; then
        echo "stress-suite: round $round failed" >&2
        exit 1
    fi
    stop_stress
    stress_pid=
done
echo "stress-suite: $rounds loaded round(s) passed" >&2
