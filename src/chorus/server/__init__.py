"""The running server: the replica loop (replica.py), peer links (peers.py),
client sessions (sessions.py), configuration (config.py), tokens (auth.py), and
``serve`` (main.py)."""

from .config import Config, ConfigError, ServerSpec, load
from .main import run, serve

__all__ = ["Config", "ConfigError", "ServerSpec", "load", "run", "serve"]
