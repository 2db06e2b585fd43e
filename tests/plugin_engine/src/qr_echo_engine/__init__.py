"""An engine outside qwenrecipes: `echo` writes the canonical settings into one YAML file and "trains" with the
HF-Trainer-style log lines qwenrecipes already parses. Only for tests (tests/test_layout.py)."""

from qr_echo_engine.engine import ENGINE

__all__ = ["ENGINE"]
