"""Every exception certmgr raises on purpose, under one base.

Callers catch :class:`CertmgrError` for "anything the library refused", or one class for
one failure. Each class also inherits the builtin it resembles (aiohttp's
``ClientOSError(ClientConnectionError, OSError)`` habit), so code written against the
builtin (``except ValueError`` around parsing, ``except OSError`` around a device) keeps
working, and carries its context as attributes rather than only in the message.

    CertmgrError
    ├── SettingsError (ValueError)        a settings object is invalid; .field names it
    ├── CertError (ValueError)            a certificate or key cannot be served
    ├── SealError (ValueError)            a sealed blob is malformed or fails authentication
    │   └── SealingUnavailable (OSError)  the TEE sealing provider gives no key
    ├── AcmeError (RuntimeError)          an ACME order failed with every CA; .retry_after
    ├── IssuedCertError (ValueError)      an issued certificate fails a check
    ├── ChallengeError (RuntimeError)     a challenge was not published / propagated; .name
    ├── CAAError (PermissionError)        CAA records forbid issuance; .name
    ├── QuoteError (ValueError)           bytes are not a well-formed quote or report
    ├── QuoteProviderError (OSError)      the TEE produced no quote
    │   └── QuoteRateLimited              more quotes asked for than the rate allows
    ├── RaTlsError (ValueError)           an RA-TLS certificate is malformed
    │   └── EndorsementsError             its endorsements extension is malformed
    ├── EvidenceError (ValueError)        a nonce evidence document or nonce is malformed
    ├── VerifyError (ValueError)          bad verifier input (collateral, allowlist, key)
    │   └── CollateralUnavailable (OSError)  collateral could not be fetched; .retry_after
    ├── PolicyError (ValueError)          a policy value or RPC answer is malformed
    ├── ReceiptError (ValueError)         a receipt is malformed or does not verify
    ├── SigningKeyError (ValueError)      the receipt signing key is missing or unusable
    ├── ReleaseError (ValueError)         a prediction input, build manifest or release key is
    │                                     malformed, or a manifest's signature does not verify
    ├── ImageBuildError (RuntimeError)    the release image cannot be built; .step names where
    └── ClusterError                      cluster coordination (etcd, shared secrets)
        ├── EtcdError (OSError)           no etcd endpoint answered, or it refused
        ├── EnvelopeError (ValueError)    a stored value is malformed or fails authentication
        └── RollbackError (ValueError)    etcd served an older version than already seen

A verifier's *verdict* (untrusted evidence) is not an exception: it is
:class:`certmgr.attest.verify.Verdict` with its failures.
"""

from __future__ import annotations

import datetime as dt

__all__ = [
    "AcmeError",
    "CAAError",
    "CertError",
    "CertmgrError",
    "ChallengeError",
    "ClusterError",
    "CollateralUnavailable",
    "EndorsementsError",
    "EnvelopeError",
    "EtcdError",
    "EvidenceError",
    "ImageBuildError",
    "IssuedCertError",
    "PolicyError",
    "QuoteError",
    "QuoteProviderError",
    "QuoteRateLimited",
    "RaTlsError",
    "ReceiptError",
    "ReleaseError",
    "RollbackError",
    "SealError",
    "SealingUnavailable",
    "SettingsError",
    "SigningKeyError",
    "VerifyError",
]


class CertmgrError(Exception):
    """Base of every error certmgr raises on purpose."""


class SettingsError(CertmgrError, ValueError):
    """A settings object is invalid; ``field`` names the setting (dotted, relative to the
    settings object: an application prefixes its own section name)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CertError(CertmgrError, ValueError):
    """A certificate or key cannot be served (unreadable, mismatched, expired, no names)."""


class SealError(CertmgrError, ValueError):
    """A sealed blob is malformed, from another provider, or fails authentication."""


class SealingUnavailable(SealError, OSError):
    """The configured TEE sealing provider cannot give us a key."""


class AcmeError(CertmgrError, RuntimeError):
    """An order failed with every configured CA; ``retry_after`` is the CA's hint, if any."""

    def __init__(self, message: str, retry_after: dt.datetime | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IssuedCertError(CertmgrError, ValueError):
    """An issued certificate fails a check; it is neither stored nor served."""


class ChallengeError(CertmgrError, RuntimeError):
    """A challenge could not be published, propagated or removed; ``name`` says for what."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class CAAError(CertmgrError, PermissionError):
    """CAA records forbid issuance for ``name`` by the configured CA or account."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"CAA forbids issuance for {name}: {message}")
        self.name = name


class QuoteError(CertmgrError, ValueError):
    """The bytes are not a well-formed quote or report of a supported version."""


class QuoteProviderError(CertmgrError, OSError):
    """The TEE did not produce a quote (device missing, busy, malformed answer)."""


class QuoteRateLimited(QuoteProviderError):
    """More quotes were asked for than the configured rate allows."""


class RaTlsError(CertmgrError, ValueError):
    """The certificate or its attestation extension is malformed or inconsistent."""


class EndorsementsError(RaTlsError):
    """An endorsements extension (``2.23.133.5.4.2``: a quote's collateral, or an SEV-SNP
    certificate table) is malformed, oversized, or of another evidence kind."""


class EvidenceError(CertmgrError, ValueError):
    """Malformed evidence document or nonce."""


class VerifyError(CertmgrError, ValueError):
    """Bad verifier input (unreadable collateral, allowlist or key), not a verdict."""


class CollateralUnavailable(VerifyError, OSError):
    """Collateral could not be fetched (network, HTTP status, AMD KDS rate limit);
    ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PolicyError(CertmgrError, ValueError):
    """A policy value (measurement id, snapshot, RPC answer) is malformed."""


class ReceiptError(CertmgrError, ValueError):
    """A receipt is malformed, or does not verify (the message says which check failed)."""


class ReleaseError(CertmgrError, ValueError):
    """A prediction input, a build manifest or a release key is malformed, or a manifest's
    signature does not verify (the message says which)."""


class SigningKeyError(CertmgrError, ValueError):
    """The signing key is missing, does not unseal, or is not a valid secp256k1 key."""


class ImageBuildError(CertmgrError, RuntimeError):
    """The release image cannot be built reproducibly (certmgr.release); .step names the
    stage (pins, base, deps, app, layer, source)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


class ClusterError(CertmgrError):
    """Cluster coordination failed (certmgr.cluster)."""


class EtcdError(ClusterError, OSError):
    """No etcd endpoint answered, or the one that did refused the request; .code is etcd's
    gRPC status code when it answered."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EnvelopeError(ClusterError, ValueError):
    """A value read from etcd is malformed, or fails authentication under the cluster key."""


class RollbackError(ClusterError, ValueError):
    """etcd served a version (or key epoch) older than one this replica has already seen."""

    def __init__(self, name: str, got: int, seen: int) -> None:
        super().__init__(f"{name}: etcd served version {got}, older than {seen} already seen")
        self.name = name
        self.got = got
        self.seen = seen
