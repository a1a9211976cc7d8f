"""The fast layer (make test-fast): pure code and the engine on SQLite with in-process stand-in backends, no service."""
