"""derlink utility server: the CSIP-AUS IEEE 2030.5 API over mutual TLS.

Modules: ``config`` (TOML + flags), ``store`` (SQLAlchemy tables, request scope, scoped queries and the
operator/admin API), ``app`` (aiohttp application: routes, error mapping, caching), ``notifications``
(durable outbox delivery), ``cli`` (``derlink server ...``).
"""
