"""Device identity per IEEE 2030.5 §6.3.3: LFDI and SFDI derived from a certificate.

LFDI: the leftmost 160 bits of SHA-256 over the certificate's DER encoding, as 40 hex digits.
SFDI: the leftmost 36 bits of the LFDI as a decimal number, followed by a check digit chosen so that
the sum of all the SFDI's digits is a multiple of 10.
"""

from __future__ import annotations

import hashlib
import re

LFDI_PATTERN = re.compile(r"^[0-9A-Fa-f]{40}$")


class IdentityError(ValueError):
    """An LFDI or SFDI that is not well formed."""


def lfdi_from_cert_der(cert_der: bytes) -> str:
    """Return the LFDI (upper-case hex) of a DER-encoded certificate."""
    return hashlib.sha256(cert_der).hexdigest()[:40].upper()


def normalise_lfdi(lfdi: str) -> str:
    """Validate an LFDI string and return it upper-case; raise IdentityError otherwise."""
    if not isinstance(lfdi, str) or not LFDI_PATTERN.match(lfdi):
        raise IdentityError(f"LFDI must be 40 hexadecimal digits, got {lfdi!r}")
    return lfdi.upper()


def operator_lfdi(text: str) -> str:
    """An LFDI typed or pasted by a person: as :func:`normalise_lfdi`, but spaces and dashes (the grouped,
    read-aloud form ``derlink certs`` prints) are allowed. For operator input only, never the wire."""
    if not isinstance(text, str):
        raise IdentityError(f"LFDI must be 40 hexadecimal digits, got {text!r}")
    return normalise_lfdi(re.sub(r"[\s-]", "", text))


def operator_sfdi(text: str | int) -> int:
    """An SFDI typed by a person, with or without spaces or dashes."""
    digits = re.sub(r"[\s-]", "", str(text))
    if not digits.isdigit():
        raise IdentityError(f"SFDI must be a decimal number, got {text!r}")
    return int(digits)


def sfdi_check_digit(value: int) -> int:
    """The digit that makes the digit sum of ``value`` followed by it divisible by 10."""
    return (10 - sum(int(d) for d in str(value)) % 10) % 10


def sfdi_from_lfdi(lfdi: str) -> int:
    """Return the SFDI (with its check digit) for an LFDI."""
    leading_36_bits = int(normalise_lfdi(lfdi)[:9], 16)
    return leading_36_bits * 10 + sfdi_check_digit(leading_36_bits)


def sfdi_is_valid(sfdi: int) -> bool:
    """True when the last digit of ``sfdi`` is the correct check digit for the rest."""
    return sfdi >= 0 and sum(int(d) for d in str(sfdi)) % 10 == 0


def lfdi_from_cert_pem(pem: bytes) -> str:
    """Return the LFDI of a PEM certificate (first certificate in the data)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(pem)
    return lfdi_from_cert_der(cert.public_bytes(Encoding.DER))


def format_sfdi(sfdi: int) -> str:
    """Group an SFDI in threes for reading aloud, e.g. ``167-261-211-391``."""
    digits = str(sfdi)
    head = len(digits) % 3 or 3
    groups = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return "-".join(groups)


def format_lfdi(lfdi: str) -> str:
    """Group an LFDI in blocks of four hex digits for reading aloud or pasting into a portal."""
    lfdi = normalise_lfdi(lfdi)
    return " ".join(lfdi[i : i + 4] for i in range(0, 40, 4))
