"""ACME (RFC 8555) with keys generated in this process: the client, challenges (HTTP-01,
TLS-ALPN-01, DNS-01), CAA (RFC 8659), sealed storage, renewal timing and the
:class:`~certmgr.acme.settings.AcmeSettings` they all take."""
