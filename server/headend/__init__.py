"""The head-end: the DNSP operators' JSON API (its own loopback listener), bulk DOE ingest, emergency
commands and the audit trail. ``derlink ctl`` (``server.ctl``) is the command line over this API."""
