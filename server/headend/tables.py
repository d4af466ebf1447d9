"""The head-end's bulk DOE tables; they live in the store's schema (``server.store.schema``)."""

from server.store.schema import doe_intervals, doe_uploads

__all__ = ["doe_intervals", "doe_uploads"]
