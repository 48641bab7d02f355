"""The control socket: ``watchd status``, ``trace`` and ``jobs`` ask the running daemon."""
