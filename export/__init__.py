"""amulet-export: offline training, threshold calibration, ONNX export and AMULET import."""
