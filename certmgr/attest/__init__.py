"""TEE attestation: evidence per TEE (Intel quotes, SEV-SNP reports, simulated quotes), the
measurement id, the RA-TLS and nonce-evidence formats, the verifier, quote providers per
guest interface (``providers/``) and the RA-TLS certificate's storage."""
