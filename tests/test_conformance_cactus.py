"""The public CSIP-AUS server test procedures (cactus-test-definitions, run by cactus-client) against
``derlink server run``: the fast subset CI runs. ``conformance/run`` runs them all (README, Conformance).

Real parts end to end: a lab PKI that ``derlink certs`` did not make, native mutual TLS, the server as a
subprocess with SQLite on disk, cactus-client in its own Python >= 3.12 venv (``.ci/run`` creates it), our
admin plugin talking only to the head-end API, and notifications delivered over mutual TLS to our sink.
"""

from __future__ import annotations

from conformance.run import FAST, Lab, ensure_venv, table


def test_cactus_fast_subset_passes(tmp_path):
    python = ensure_venv()  # fails (not skips) when no Python >= 3.12 is available
    lab = Lab(tmp_path)
    results = [lab.run_one(python, procedure, timeout=240) for procedure in FAST]
    assert [r["procedure"] for r in results] == list(FAST)
    assert all(r["status"] == "PASSED" for r in results), table(results)
    assert all(r["steps_passed"] == r["steps"] > 0 for r in results), table(results)
