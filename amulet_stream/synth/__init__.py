"""The motor and fault generator (demo, tests, the evaluation corpus); never used by runtime."""
