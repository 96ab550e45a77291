"""``teeproxy caa DOMAIN``: the CAA records that pin issuance to this enclave's ACME account.

Prints zone-file lines (RFC 8659 ``issue``/``issuewild`` with the RFC 8657 parameters
``accounturi`` and ``validationmethods``) for every configured CA identity, then the CAA
records currently relevant for DOMAIN and whether they allow our order. Prints no key
material: only the account URI, which is public.
"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlsplit

from certmgr.acme.caa import evaluate, pinning_records, relevant_records, resolver_for
from certmgr.acme.storage import AcmeStore
from certmgr.keys import InsecureDevSealer
from proxy.config import Config, ConfigError, load, loads

__all__ = ["add_caa_parser", "cmd_caa", "known_identity"]

# Issuer domain names CAs publish for CAA (their CPS); used when caa_identities is empty.
_KNOWN = {
    "letsencrypt.org": "letsencrypt.org",
    "zerossl.com": "sectigo.com",
    "pki.goog": "pki.goog",
    "buypass.com": "buypass.com",
}


def known_identity(directory_url: str) -> str | None:
    host = (urlsplit(directory_url).hostname or "").lower()
    for suffix, ident in _KNOWN.items():
        if host == suffix or host.endswith("." + suffix):
            return ident
    return None


def _identities(cfg: Config) -> list[str]:
    if cfg.acme.caa_identities:
        return list(cfg.acme.caa_identities)
    out = [i for i in (known_identity(u) for u in cfg.acme.directory_urls) if i]
    return list(dict.fromkeys(out))


def cmd_caa(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config) if args.config else loads("")
    except ConfigError as e:
        print(f"teeproxy caa: config error: {e}", file=sys.stderr)
        return 2
    domain = args.domain.rstrip(".").lower()
    store = AcmeStore(cfg.state_dir, InsecureDevSealer())  # reads the public account file only
    account = next((u for u in (store.account_uri(d) for d in cfg.acme.directory_urls) if u), None)
    if account is None:
        print(
            "teeproxy caa: no ACME account in the state directory yet: the records below do "
            "not pin an account (run `teeproxy serve` once, then run this again)",
            file=sys.stderr,
        )
    idents = _identities(cfg)
    if not idents:
        print("teeproxy caa: set acme.caa_identities (the CA's CAA domain)", file=sys.stderr)
        return 2
    names = [n for n in cfg.acme.names if n.removeprefix("*.") == domain] or [domain]
    methods = [cfg.acme.challenge_for(n) for n in names] if cfg.acme.names else []
    wildcard = any(n.startswith("*.") for n in names)
    print(f"; CAA records pinning issuance for {domain} to this enclave's ACME account")
    for line in pinning_records(domain, idents, account, methods, wildcard):
        print(line)
    if args.check:
        owner, records = relevant_records(domain, resolver_for(cfg.acme))
        print(f"; relevant CAA records now ({owner or 'none found'}):")
        for r in records:
            print(f";   {r}")
        for n in names:
            why = evaluate(n, records, idents, account, cfg.acme.challenge_for(n))
            print(f"; {n}: {'allowed' if why is None else 'FORBIDDEN: ' + why}")
    return 0


def add_caa_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("caa", help="print CAA records pinning issuance to our ACME account")
    c.add_argument("domain")
    c.add_argument("--config", "-c", help="TOML config file")
    c.add_argument("--check", action="store_true", help="also look up the current CAA records")
    c.set_defaults(func=cmd_caa)
