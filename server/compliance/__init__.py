"""What happened after the operator acted: acknowledgements, compliance and silence, judged at the server.

* :mod:`server.compliance.targets` — the sites a control's target covers;
* :mod:`server.compliance.acks` — Responses per control: counts by status, non-responders;
* :mod:`server.compliance.judge` — the pure judging rules (tolerance, settling), shared with ``derlink demo``;
* :mod:`server.compliance.assess` — the service: telemetry stored against the limits that were published.

These modules only read the store's tables; they never write 2030.5 state.
"""
