"""certmgr: trust material for TEE-hosted TLS servers and their clients, as a library.

It never imports the proxy (``proxy/``): every part takes explicit settings objects and
arguments, as certbot's ``acme.ClientV2(directory, net)`` never sees an application
config. Imports point downward, from the subpackages to the shared modules:

- ``acme/``: ACME (RFC 8555) client, challenges (HTTP-01, TLS-ALPN-01, DNS-01), CAA,
  sealed storage, renewal timing, and its own :class:`~certmgr.acme.settings.AcmeSettings`;
- ``attest/``: evidence per TEE (Intel quotes, SEV-SNP reports, simulated), the
  measurement id, RA-TLS and nonce-evidence formats, the verifier, quote providers per
  guest interface (``attest/providers/``), the RA-TLS certificate's storage;
- ``policy/``: the on-chain measurement policy: pure model, RPC reader, contract bindings,
  allowlist files, the embedded development chain;
- ``receipts/``: signed inference receipts: format, signing key, verification;
- shared: ``keys`` (key generation, sealing interface), ``sealing`` (TEE sealers),
  ``store`` (the immutable certificate store), ``devca``, ``errors`` (one exception base,
  :class:`~certmgr.errors.CertmgrError`), ``log`` (logger names), ``eth``, ``unixhttp``.

Modules that say they are pure do no I/O and never await; I/O sits in the modules that
say so (storage, providers, RPC, collateral).
"""
