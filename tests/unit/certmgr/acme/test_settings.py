"""certmgr.acme.settings: the [acme] rules (through proxy.config, naming the
field), the challenge chosen per name, DNS name syntax."""

from __future__ import annotations

import pytest

from certmgr.acme.settings import valid_dns_name
from proxy.config import loads
from proxy.errors import ConfigError


def acme(extra: str) -> str:
    names = "" if "names =" in extra else 'names = ["a.example.com"]\n'
    return f"[acme]\nenabled = true\n{names}{extra}\n"


def test_default_config_has_acme_disabled_and_dev_ca_path_unchanged() -> None:
    cfg = loads("")
    assert not cfg.acme.enabled
    assert cfg.acme.key_type == "p256"
    assert cfg.acme.directory_urls == ("https://acme-v02.api.letsencrypt.org/directory",)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("names = []", "acme.names"),
        ('names = ["A.example.com"]', "acme.names[0]"),
        ('directory_urls = ["http://ca.example/dir"]', "acme.directory_urls[0]"),
        ('contact = ["ops@example.com"]', "acme.contact[0]"),
        ('key_type = "rsa1024"', "acme.key_type"),
        ('profile = "gold"', "acme.profile"),
        ('challenge = "dns-02"', "acme.challenge"),
        ('eab_kid_env = "KID"', "acme.eab_hmac_env"),
        ('challenge = "dns-01"', "acme.dns_update_server"),
        (
            'names = ["*.example.com"]\nchallenge_overrides = ["*.example.com=http-01"]',
            "acme.challenge_overrides",
        ),
        ('challenge_overrides = ["b.example.com=dns-01"]', "acme.challenge_overrides[0]"),
        ("retry_base = 0", "acme.retry_base"),
        ("retry_max = 1.0", "acme.retry_max"),
        ("emergency_fraction = 0.9", "acme.emergency_fraction"),
        ('tsig_algorithm = "hmac-md5"', "acme.tsig_algorithm"),
    ],
)
def test_acme_config_errors_name_the_field(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(acme(extra))
    assert e.value.field == field


def test_challenge_selection_per_name() -> None:
    cfg = loads(
        acme(
            'names = ["a.example.com", "b.example.com", "*.example.com"]\n'
            'challenge = "tls-alpn-01"\nchallenge_overrides = ["b.example.com=http-01"]\n'
            'dns_update_server = "127.0.0.1:53"\ntsig_key_name = "k"\ntsig_secret_env = "S"'
        )
    ).acme
    assert cfg.challenge_for("a.example.com") == "tls-alpn-01"
    assert cfg.challenge_for("b.example.com") == "http-01"
    assert cfg.challenge_for("*.example.com") == "dns-01"


def test_valid_dns_name() -> None:
    assert valid_dns_name("*.a.example")
    assert not valid_dns_name("a.*.example")
    assert not valid_dns_name("-a.example")
    assert not valid_dns_name("example")
    assert not valid_dns_name("a" * 64 + ".example")
