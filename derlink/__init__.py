"""derlink: an open IEEE 2030.5 / CSIP-AUS system (utility server, site gateway, simulators, PKI)."""

__version__ = "0.1.0"
