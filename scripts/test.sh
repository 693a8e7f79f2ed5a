#!/usr/bin/env bash
# The test command of the README and of CI: set up (system packages, .venv),
# lint, then the whole pytest suite. Extra arguments go to pytest.
# XUNFANG_LONG=1 adds the soak and fault runs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup.sh"
cd "$here"
echo "== ruff" >&2
.venv/bin/ruff check .
echo "== pytest" >&2
exec .venv/bin/python -m pytest "$@"
