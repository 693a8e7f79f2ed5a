#!/usr/bin/env bash
# The demo command of the README: set up (system packages, .venv) and run a
# simulated unit end to end with its own broker and centre. Needs no root and
# no hardware; Ctrl-C stops it. `--seconds N` stops it after N seconds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup.sh"
exec "$here/.venv/bin/python" "$here/scripts/demo.py" "$@"
