#!/usr/bin/env bash
# Creates (or refreshes) the project's Python venv with the independent readers and
# moto. Idempotent: a stamp holding the requirements' hash skips pip when nothing changed.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
want=$(sha256sum "$INFRA_DIR/requirements.txt" | cut -d' ' -f1)
stamp="$VENV/.tributary-requirements"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
log "installing Python tools into $VENV"
mkdir -p "$TRIBUTARY_CACHE"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$INFRA_DIR/requirements.txt"
echo "$want" > "$stamp"
