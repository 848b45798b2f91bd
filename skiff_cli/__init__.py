"""The `skiff` command line: argument parsing on top of orchestration, serving and ml."""
