"""Hardening (issue 6): hostile recipe and data files, path and run-dir safety, atomic writes, secrets,
offline/telemetry environment and the known-failure doctor. Property-based rendering tests live in
tests/test_properties.py.

Every hostile file is checked the way a user meets it: through the CLI entry point, expecting exit 2, the
file named in a one-line reason, and no traceback."""
