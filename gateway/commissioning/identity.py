"""Step 2, ``identity``: the gateway's key and CSR made here (or a certificate imported); LFDI, SFDI, PIN."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from gateway.commissioning.common import (
    Context,
    StepFailed,
    ask_value,
)
from sep2.files import write_atomic


def generate_pin() -> int:
    """A 2030.5 registration PIN: five random digits and a check digit (digit sum divisible by 10)."""
    from sep2.identity import sfdi_check_digit

    body = secrets.randbelow(90000) + 10000
    return body * 10 + sfdi_check_digit(body)


def _load_cert(path: Path) -> Any:
    from certs.pki import PkiError, load_certificate

    try:
        return load_certificate(path)
    except (PkiError, OSError, ValueError) as exc:
        raise StepFailed(
            f"--cert {path}: not a certificate: {exc}",
            "pass the PEM certificate file the CA issued for this gateway",
        ) from None


def _key_matches(cert: Any, key_path: Path) -> bool:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


async def step_identity(ctx: Context) -> None:
    from certs.pki import PkiError, create_key_and_csr, describe_certificate, sign_csr
    from sep2.identity import format_lfdi, format_sfdi

    opts, ui, state = ctx.opts, ctx.ui, ctx.state
    d = opts.identity_dir
    d.mkdir(parents=True, exist_ok=True)
    key_path, csr_path = d / "gateway.key", d / "gateway.csr"
    cert_path = d / "gateway-chain.pem"
    previous = state.get("identity") or {}
    if opts.cert is not None and opts.key is not None:  # issued elsewhere, key included
        cert = _load_cert(opts.cert)
        try:
            matches = _key_matches(cert, opts.key)
        except (OSError, ValueError, TypeError) as exc:
            raise StepFailed(
                f"--key {opts.key}: not a usable private key: {exc}",
                "pass the PEM private key that belongs to --cert",
            ) from None
        if not matches:
            raise StepFailed(
                f"--key {opts.key} does not belong to --cert {opts.cert}",
                "pass the key the certificate was issued for",
            ) from None
        write_atomic(key_path, opts.key.read_bytes(), 0o600)
        write_atomic(cert_path, opts.cert.read_bytes())
        csr_path.unlink(missing_ok=True)
        source = "imported (certificate and key issued elsewhere)"
    else:
        if not key_path.exists():
            cn = opts.name or f"derlink-gateway-{secrets.token_hex(4)}"
            try:
                create_key_and_csr(key_path, csr_path, cn)
            except PkiError as exc:
                raise StepFailed(f"--name: {exc}", "rerun with a shorter --name") from None
            state.record("key and CSR generated on the gateway", csr=str(csr_path), common_name=cn)
            ctx.save()
            ui.info(f"generated the gateway's private key ({key_path}) and a CSR ({csr_path})")
        given = opts.cert
        if given is None and opts.sign_with_ca is not None:
            tmp_cert = d / "gateway.pem"
            try:
                sign_csr(opts.sign_with_ca, csr_path, out=tmp_cert, force=True)
            except PkiError as exc:
                raise StepFailed(
                    f"--sign-with-ca {opts.sign_with_ca}: {exc}",
                    "pass a derlink PKI directory (derlink certs init) or import --cert",
                ) from None
            given = tmp_cert.with_name("gateway-chain.pem")
            source = f"generated here, CSR signed by {opts.sign_with_ca}"
        elif (
            given is None
            and previous.get("cert_path")
            and Path(previous["cert_path"]).exists()  # noqa: ASYNC240
            and not csr_path.exists()
        ):
            given = Path(previous["cert_path"])
            source = previous.get("source", "kept")
        elif given is None:
            if ui.interactive:
                ui.panel(
                    "Certificate signing request",
                    [
                        f"send {csr_path} to the DNSP's certificate authority;",
                        "enter the path of the certificate it issues (PEM, with its chain if given)",
                    ],
                )
                given = ask_value(ui, None, "--cert", "certificate file", lambda s: Path(s).expanduser())
            else:
                raise StepFailed(
                    f"waiting for a certificate: the CSR is {csr_path}",
                    f"send {csr_path} to the DNSP's certificate authority and rerun with --cert ISSUED.pem",
                    csr=str(csr_path),
                )
            source = "generated here, CSR signed by the DNSP's CA"
        else:
            source = "generated here, CSR signed by the DNSP's CA"
        cert = _load_cert(given)
        if not _key_matches(cert, key_path):
            raise StepFailed(
                f"--cert {given} was not issued for this gateway's key ({key_path})",
                f"ask the CA to sign {csr_path} (the CSR made on this gateway) and rerun with that --cert",
            )
        if Path(given).resolve() != cert_path.resolve():  # noqa: ASYNC240 (small local files)
            write_atomic(cert_path, Path(given).read_bytes())  # noqa: ASYNC240
    description = describe_certificate(cert_path)
    if description["role"] in ("ca", "server"):
        raise StepFailed(
            f"the certificate is a {description['role']} certificate, not a client certificate",
            "import the gateway's own (client) certificate",
        ) from None
    pin = opts.pin if opts.pin is not None else previous.get("pin") or generate_pin()
    if not 0 <= int(pin) <= 999999:
        raise StepFailed(f"--pin: must be 0..999999, got {pin}", "rerun with the 6-digit PIN")
    lfdi, sfdi = description["lfdi"], description["sfdi"]
    identity = {
        "lfdi": lfdi,
        "lfdi_grouped": format_lfdi(lfdi),
        "sfdi": sfdi,
        "sfdi_grouped": format_sfdi(sfdi),
        "sfdi_check_digit": sfdi % 10,
        "pin": int(pin),
        "cert_path": str(cert_path),
        "key_path": str(key_path),
        "csr_path": str(csr_path) if csr_path.exists() else None,
        "subject": description["subject"],
        "issuer": description["issuer"],
        "serial": description["serial"],
        "not_after": description["not_after"],
        "source": source,
    }
    state.set("identity", identity)
    ui.panel(
        "Gateway identity — give these to the DNSP",
        [
            f"LFDI  {identity['lfdi_grouped']}",
            f"SFDI  {identity['sfdi_grouped']}   (last digit {sfdi % 10} is the check digit)",
            f"PIN   {int(pin):06d}",
            f"certificate: {description['subject']}, issued by {description['issuer']}",
        ],
    )
