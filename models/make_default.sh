#!/usr/bin/env bash
# Rebuilds models/default.onnx from generated healthy-motor sound (no recording is shipped).
# Usage: models/make_default.sh   (needs the training extra: pip install -e '.[train]')
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
amulet-export synth --output "$work/healthy.wav" --seconds 300 --rate 16000 --seed 1
amulet-export train --input-file "$work/healthy.wav" --output-dir "$work/out" \
    --profile logmel-v1 --epochs 20 --seed 10 --silent
amulet-export verify "$work/out/model.onnx"
cp "$work/out/model.onnx" default.onnx
cp "$work/out/loss.png" default-loss.png
cp "$work/out/scores.png" default-scores.png
sha256sum default.onnx
