"""The `whisper-serve` command line (console script); see ``serve_app.cli.main``."""

from serve_app.cli.main import main

__all__ = ["main"]
