"""watchd: run commands when files change, by rules written in YAML."""

__version__ = "0.1.0"
