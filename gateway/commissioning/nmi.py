"""NMI checks live in :mod:`sep2.nmi` (the server validates ConnectionPoints with the same rules)."""

from sep2.nmi import Nmi, NmiError, nmi_checksum, validate_nmi

__all__ = ["Nmi", "NmiError", "nmi_checksum", "validate_nmi"]
