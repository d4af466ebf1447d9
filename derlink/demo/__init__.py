"""`derlink demo`: the whole system on one machine, a scenario played on an accelerated clock, judged.

See README-scenarios.md in this folder for the command, the verdict and the scenario format.
"""
