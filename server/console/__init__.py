"""The operator web console, served by the head-end listener (see server.console.routes)."""

from server.console.routes import mount_console

__all__ = ["mount_console"]
