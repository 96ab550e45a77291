"""teeproxy: the TLS-terminating reverse proxy that runs inside the TEE."""

__version__ = "0.1.0"
