"""What happened after the operator acted: acknowledgements, compliance and silence, judged at the server.

* :mod:`server.compliance.targets` — the sites a control's target covers;
* :mod:`server.compliance.acks` — Responses per control: counts by status, non-responders;
* :mod:`server.compliance.judge` — the pure judging rules (tolerance, settling), shared with ``derlink demo``;
* :mod:`server.compliance.assess` — the service: telemetry stored against the limits that were published.

These modules only read the store's tables; they never write 2030.5 state (``assess.act_on_finding``
issues a normal control through ``Admin``).

For the web console (server/console/, owned elsewhere): its compliance page counts responders and silent
sites with its own queries. It could switch to ``acks.ack_summary`` / ``acks.ack_csv`` (per control: counts
by Response status, non-responders after a set time) and to ``assess.assess`` / ``assess.assessment_csv``
(breaches with limit, excess and duration, silence by postRate, capability mismatches, curtailment per
group, findings), or to the head-end routes over them: ``GET /api/controls/{mrid}/acks``,
``GET /api/compliance``, ``POST /api/compliance/act`` and ``GET /api/telemetry`` (all JSON or CSV).
"""
