"""Incident tables; they live in the store's schema (``server.store.schema``, migration ``i0102``)."""

from server.store.schema import OPEN_STATES_SQL, incident_events, incidents

__all__ = ["OPEN_STATES_SQL", "incident_events", "incidents"]
