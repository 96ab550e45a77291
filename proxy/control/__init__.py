"""The supervisor's control plane: the supervisor process, the admin listener, certificate
preparation, the ACME loop, the RA-TLS life cycle, governance and the shared receipt
store. It may import the data plane (it starts the workers), never the CLI."""
