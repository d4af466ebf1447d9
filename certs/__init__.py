"""derlink PKI toolkit: a 2030.5-style certificate chain (ECDSA P-256), device identities, TLS contexts."""
