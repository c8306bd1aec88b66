"""The amulet-stream command line: argument parsing and one module per command."""
