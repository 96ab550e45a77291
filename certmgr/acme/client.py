"""ACME issuance (RFC 8555) with keys generated in this process; blocking, run in a thread.

The synchronous ``acme`` library (certbot's) speaks the protocol; this module drives one
order from account to verified certificate and never runs on the event loop (the supervisor
calls :meth:`AcmeIssuer.obtain` through ``asyncio.to_thread``).

- Keys: the account key and every certificate key are generated here (ECDSA P-256 by
  default, P-384 optional) and written only sealed (:mod:`certmgr.acme.storage`). A new key per
  certificate, so every key in the evidence list maps to exactly one issuance.
- Issuers: ``acme.directory_urls`` are tried in order; a failure with one (CA down, refused
  order, failed validation) is logged and the next is tried. External Account Binding
  (RFC 8555 7.3.4) is sent to directories that require it.
- Challenges per name (:meth:`AcmeSettings.challenge_for`): HTTP-01 and TLS-ALPN-01
  material is published through a :class:`ChallengePublisher` (the workers answer it);
  DNS-01 records are added by RFC 2136 update, checked on every authoritative server, and
  removed afterwards.
- CAA (RFC 8659) is checked before ordering (:mod:`certmgr.acme.caa`).
- The issued chain is verified (:func:`certmgr.acme.storage.verify_issued`) before it is stored.
- ARI (RFC 9773): :meth:`AcmeIssuer.ari_window` asks the CA for its suggested window.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests  # noqa: TID251 - this module runs only in a worker thread
from acme import challenges, client, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy import jwa, jwk
from josepy.json_util import encode_b64jose

from certmgr.acme.challenges.dns01 import Dns01
from certmgr.acme.settings import AcmeSettings
from certmgr.acme.storage import AcmeStore, verify_issued
from certmgr.errors import AcmeError, CAAError, ChallengeError, IssuedCertError
from certmgr.keys import Sealer, spki_sha256
from certmgr.log import acme_log as log

__all__ = [
    "AcmeIssuer",
    "ChallengePublisher",
    "Issued",
    "generate_cert_key",
]

USER_AGENT = "teeproxy-acme"


class ChallengePublisher(Protocol):
    """Where HTTP-01 and TLS-ALPN-01 answers go so the data plane can serve them."""

    def publish_http01(self, token: str, key_authorization: str) -> None: ...

    def publish_tlsalpn01(self, name: str, key_authorization: str) -> None: ...

    def commit(self) -> None:
        """Block until the workers serve everything published (called before answering)."""

    def cleanup(self) -> None:
        """Remove everything published (called after the order, success or not)."""


@dataclass(frozen=True, slots=True)
class Issued:
    chain_pem: bytes
    key: ec.EllipticCurvePrivateKey
    directory: str
    account_uri: str
    names: tuple[str, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem)


def generate_cert_key(key_type: str) -> ec.EllipticCurvePrivateKey:
    curve: ec.EllipticCurve = ec.SECP384R1() if key_type == "p384" else ec.SECP256R1()
    return ec.generate_private_key(curve)


def make_csr(key: ec.EllipticCurvePrivateKey, names: tuple[str, ...]) -> bytes:
    """A CSR naming every identifier in subjectAltName (RFC 8555 7.4: CN is optional)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _parse_retry_after(value: str | None, now: dt.datetime) -> dt.datetime | None:
    """A Retry-After header (seconds or HTTP date, RFC 9110 10.2.3), bounded to a day."""
    if not value or len(value) > 64:
        return None
    if value.strip().isdigit():
        return now + dt.timedelta(seconds=min(int(value), 86400))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(when, now + dt.timedelta(days=1))


@dataclass
class _Session:
    directory_url: str
    acme: client.ClientV2
    account_uri: str
    last_retry_after: list[str] = field(default_factory=list)


class AcmeIssuer:
    """One ACME configuration bound to a state directory and a sealer (blocking methods)."""

    def __init__(
        self,
        cfg: AcmeSettings,
        state_dir: str | Path,
        sealer: Sealer,
        publisher: ChallengePublisher,
        *,
        caa_check: Callable[[tuple[str, ...], str | None], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.state_dir = Path(state_dir)
        self.store = AcmeStore(state_dir, sealer)
        self.publisher = publisher
        self._caa_check = caa_check
        self._dns: Dns01 | None = None

    # -- DNS --------------------------------------------------------------------------------

    def dns(self) -> Dns01:
        if self._dns is None:
            self._dns = Dns01(self.cfg.dns_settings())
        return self._dns

    # -- account ----------------------------------------------------------------------------

    def _session(self, url: str) -> _Session:
        key = self.store.account_key(url)
        account_jwk = jwk.JWKEC(key=key)
        net = _Network(
            account_jwk,
            alg=jwa.ES256,
            user_agent=USER_AGENT,
            timeout=max(1, int(self.cfg.request_timeout)),
        )
        if self.cfg.ca_bundle:
            # requests takes a CA bundle path where verify=True would use the system store.
            net.verify_ssl = self.cfg.ca_bundle  # type: ignore[assignment]
        seen: list[str] = []

        def remember(resp: requests.Response, *_a: Any, **_k: Any) -> None:
            ra = resp.headers.get("Retry-After")
            if ra is not None and resp.status_code >= 400:
                seen.append(ra)

        net.session.hooks["response"].append(remember)
        directory = client.ClientV2.get_directory(url, net)
        acme = client.ClientV2(directory, net)
        stored = self.store.account_uri(url)
        eab = None
        if directory.meta.external_account_required:
            creds = self.cfg.eab_credentials()
            if creds is None:
                raise AcmeError(f"{url} requires External Account Binding: set acme.eab_*_env")
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=account_jwk.public_key(),
                kid=creds[0],
                hmac_key=creds[1],
                directory=directory,
            )
        reg = messages.NewRegistration(
            contact=tuple(self.cfg.contact),
            terms_of_service_agreed=True,
            external_account_binding=eab,
        )
        try:
            regr = acme.new_account(reg)
            uri = regr.uri or ""
            log.info("ACME account registered at %s: %s", url, uri)
        except errors.ConflictError as e:
            # The key already has an account (RFC 8555 7.3.1): use it.
            uri = e.location
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        if not uri:
            raise AcmeError(f"{url}: the CA returned no account URL")
        if stored != uri:
            self.store.save_account(url, uri)
        return _Session(url, acme, uri, seen)

    def account_uri(self) -> str | None:
        for url in self.cfg.directory_urls:
            uri = self.store.account_uri(url)
            if uri:
                return uri
        return None

    # -- issuance ---------------------------------------------------------------------------

    def obtain(self, now: Callable[[], dt.datetime] | None = None) -> Issued:
        """Order a certificate for ``acme.names``, trying each directory in turn."""
        clock = now or (lambda: dt.datetime.now(dt.UTC))
        names = tuple(self.cfg.names)
        failures: list[str] = []
        retry_after: dt.datetime | None = None
        for url in self.cfg.directory_urls:
            sess: _Session | None = None
            try:
                sess = self._session(url)
                if self._caa_check is not None:
                    self._caa_check(names, sess.account_uri)
                issued = self._order(sess, names, clock)
            except (
                AcmeError,
                ChallengeError,
                IssuedCertError,
                errors.Error,
                messages.Error,
                requests.RequestException,
                OSError,
            ) as e:
                msg = f"{url}: {type(e).__name__}: {_describe(e)}"
                log.warning("ACME order failed: %s", msg)
                failures.append(msg)
                if sess is not None and sess.last_retry_after:
                    ra = _parse_retry_after(sess.last_retry_after[-1], clock())
                    if ra is not None and (retry_after is None or ra < retry_after):
                        retry_after = ra
                if isinstance(e, CAAError):
                    raise  # the same records apply to every CA we could try next
                continue
            self.store.save_cert(issued.chain_pem, issued.key, url, names, sess.account_uri)
            log.info(
                "certificate issued by %s for %s (spki sha256 %s, until %s)",
                url,
                ", ".join(names),
                spki_sha256(issued.key.public_key()).hex()[:16],
                issued.leaf.not_valid_after_utc.isoformat(),
            )
            return issued
        raise AcmeError("; ".join(failures), retry_after)

    def _order(
        self, sess: _Session, names: tuple[str, ...], clock: Callable[[], dt.datetime]
    ) -> Issued:
        key = generate_cert_key(self.cfg.key_type)
        csr = make_csr(key, names)
        acme = sess.acme
        profile = self.cfg.profile or None
        if profile and not (acme.directory.meta.profiles or {}).get(profile):
            log.warning(
                "%s does not advertise profile %r: ordering without", sess.directory_url, profile
            )
            profile = None
        orderr = acme.new_order(csr, profile=profile)
        deadline = dt.datetime.now() + dt.timedelta(seconds=self.cfg.order_timeout)
        dns_records: list[tuple[str, str]] = []
        try:
            answers = self._prepare_challenges(acme, orderr, dns_records)
            for challb, response in answers:
                acme.answer_challenge(challb, response)
            orderr = acme.poll_authorizations(orderr, deadline)
            orderr = acme.finalize_order(orderr, deadline)
        finally:
            self._cleanup(dns_records)
        chain_pem = (orderr.fullchain_pem or "").encode()
        chain = verify_issued(chain_pem, key, names, clock())
        del chain
        return Issued(chain_pem, key, sess.directory_url, sess.account_uri, names)

    def _prepare_challenges(
        self,
        acme: client.ClientV2,
        orderr: messages.OrderResource,
        dns_records: list[tuple[str, str]],
    ) -> list[tuple[messages.ChallengeBody, challenges.ChallengeResponse]]:
        account_key = acme.net.key
        if account_key is None:
            raise AcmeError("ACME client without an account key")
        answers: list[tuple[messages.ChallengeBody, challenges.ChallengeResponse]] = []
        need_commit = False
        for authzr in orderr.authorizations:
            body = authzr.body
            if body.status == messages.STATUS_VALID:
                continue  # reused authorization (RFC 8555 7.1.4)
            ident = body.identifier.value
            name = f"*.{ident}" if body.wildcard else ident
            wanted = self.cfg.challenge_for(name)
            challb = _find(body.challenges, wanted)
            if challb is None:
                offered = ", ".join(_chall_type(c) for c in body.challenges)
                raise AcmeError(f"{name}: CA offers no {wanted} challenge (offers {offered})")
            token_b64 = _token(challb)
            key_authz = f"{token_b64}.{encode_b64jose(account_key.thumbprint())}"
            if wanted == "http-01":
                self.publisher.publish_http01(token_b64, key_authz)
                need_commit = True
                response: challenges.ChallengeResponse = challenges.HTTP01Response()
            elif wanted == "tls-alpn-01":
                self.publisher.publish_tlsalpn01(ident, key_authz)
                need_commit = True
                response = _EmptyResponse()
            else:
                value = encode_b64jose(hashlib.sha256(key_authz.encode()).digest())
                self.dns().add(name, value)
                dns_records.append((name, value))
                response = challenges.DNS01Response()
            answers.append((challb, response))
        for name, value in dns_records:
            self.dns().wait_propagated(name, value)
        if need_commit:
            self.publisher.commit()
        return answers

    def _cleanup(self, dns_records: list[tuple[str, str]]) -> None:
        try:
            self.publisher.cleanup()
        except OSError as e:
            log.warning("challenge cleanup failed: %s", e)
        for name, value in dns_records:
            try:
                self.dns().remove(name, value)
            except ChallengeError as e:
                log.warning("dns-01 TXT cleanup failed (record left in the zone): %s", e)

    # -- ARI --------------------------------------------------------------------------------

    def ari_window(self, cert_pem: bytes) -> tuple[dt.datetime, dt.datetime] | None:
        """The CA's suggested renewal window (RFC 9773), or None when it offers no ARI."""
        url = self.cfg.directory_urls[0]
        sess = self._session(url)
        try:
            base = sess.acme.directory["renewalInfo"]
        except KeyError:
            return None
        if not isinstance(base, str) or not base.startswith("https://"):
            return None
        cert = x509.load_pem_x509_certificate(cert_pem)
        path = client._renewal_info_path_component(cert)  # RFC 9773 4.1 certificate id
        resp = sess.acme.net.get(f"{base}/{path}", content_type="application/json")
        info = messages.RenewalInfo.from_json(resp.json())
        start = info.suggested_window.start
        end = info.suggested_window.end
        return (_utc(start), _utc(end))


def ari_window_or_none(
    issuer: AcmeIssuer, cert_pem: bytes
) -> tuple[dt.datetime, dt.datetime] | None:
    """:meth:`AcmeIssuer.ari_window`, with any failure logged and read as "no ARI"."""
    try:
        return issuer.ari_window(cert_pem)
    except (
        AcmeError,
        errors.Error,
        messages.Error,
        requests.RequestException,
        OSError,
        ValueError,
        KeyError,
    ) as e:
        log.info("ARI unavailable (%s): renewing at two thirds of the lifetime", e)
        return None


class _Network(client.ClientNetwork):
    """ClientNetwork retrying a ``badNonce`` rejection a few times (RFC 8555 6.5: a client
    should retry with the fresh nonce the error carries); the library retries only once."""

    BAD_NONCE_RETRIES = 5

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for _ in range(self.BAD_NONCE_RETRIES):
            try:
                return super().post(*args, **kwargs)
            except messages.Error as e:
                if e.code != "badNonce":
                    raise
                log.info("ACME: nonce rejected twice, retrying")
        return super().post(*args, **kwargs)


class _EmptyResponse(challenges.ChallengeResponse):
    """The ``{}`` payload that answers a challenge type the library does not model."""

    typ = "tls-alpn-01"

    def __bool__(self) -> bool:
        # A field-less object is an empty mapping, which the library would send as an empty
        # (POST-as-GET) payload; RFC 8555 7.5.1 needs the JSON object "{}".
        return True


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _chall_type(challb: messages.ChallengeBody) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", "?"))
    return str(chall.typ)


def _find(challs: Sequence[messages.ChallengeBody], wanted: str) -> messages.ChallengeBody | None:
    for c in challs:
        if _chall_type(c) == wanted:
            return c
    return None


def _token(challb: messages.ChallengeBody) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        token = chall.jobj.get("token")
        if not isinstance(token, str) or not 16 <= len(token) <= 128:
            raise AcmeError("challenge without a valid token")
        return token
    return encode_b64jose(chall.token)


def _describe(e: BaseException) -> str:
    if isinstance(e, errors.ValidationError):
        parts = []
        for authzr in e.failed_authzrs:
            for c in authzr.body.challenges:
                if c.error is not None:
                    parts.append(f"{authzr.body.identifier.value}: {c.error.detail or c.error}")
        return "; ".join(parts) or str(e)
    return str(e) or repr(e)
