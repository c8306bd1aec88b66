"""Samples -> states: frames, features, the ONNX model, window scores, input checks, detector."""
