"""Signed inference receipts: the format, the signing key, off-chain verification."""
