#!/usr/bin/env bash
# Sets up what the test suite needs on a fresh Debian/Ubuntu machine, then runs it:
# system packages (apt when root, else a message), .venv with the package and its
# training and dev extras, ruff, mypy --strict, lint-imports (the import layers), pytest
# on two workers (pytest-xdist).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AMULET_VENV:-.venv}
PY=${PYTHON:-python3}

missing=()
command -v "$PY" >/dev/null || missing+=(python3)
"$PY" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# PortAudio for sounddevice (live capture tests read an ALSA file-plugin device)
{ ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libportaudio\.so\.2' \
  || missing+=(libportaudio2)
# real servers the MQTT and metrics tests start on 127.0.0.1
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v openssl >/dev/null || missing+=(openssl)
# a real headless browser for the console's page (selenium drives Debian's chromedriver)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "tests/run.sh: missing system packages: ${missing[*]}" >&2
    echo "  install them with: sudo apt-get install ${missing[*]}" >&2
    exit 2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[train,dev]'
"$VENV/bin/ruff" check .
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache
export TF_CPP_MIN_LOG_LEVEL=3
# two workers (-n 0 after it runs everything in one process)
"$VENV/bin/python" -m pytest -n 2 "$@"
