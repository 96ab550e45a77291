"""certmgr.attest.snp_collateral: certificate tables, files, and AMD KDS over loopback."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from certmgr.attest.sevsnp import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    VLEK_GUID,
    CertTableEntry,
    SnpProduct,
    build_cert_table,
    parse_snp,
)
from certmgr.attest.snp_collateral import (
    KdsClient,
    SnpCollateralSource,
    collateral_from_cert_table,
    kds_cert_chain_path,
    kds_vcek_path,
    load_collateral_path,
    read_collateral_path,
)
from certmgr.attest.snp_verify import (
    SnpPolicy,
    SnpReason,
    load_certificates,
    verify_snp_report,
)
from certmgr.errors import CollateralUnavailable, QuoteError, VerifyError
from tests.helpers.snp import (
    DATA,
    T_DSTACK,
    T_GOSEV,
    FakeKds,
    certs,
    data,
    dstack_report,
    gosev_kds,
    gosev_report,
    serve_kds,
    synthetic_report,
    with_key_info,
)

SMT_OK = SnpPolicy(allow_smt=True)


# -- the extended report's certificate table ------------------------------------------------


def test_cert_table_from_real_certificates_verifies() -> None:
    ask, ark = certs("ask_ark_milan.pem")
    table = build_cert_table(
        [
            CertTableEntry(ARK_GUID, ark),
            CertTableEntry(ASK_GUID, ask),
            CertTableEntry(VCEK_GUID, data("vcek.testcer")),
        ]
    )
    coll = collateral_from_cert_table(table + bytes(1000))
    assert (coll.ask, coll.ark, coll.vek) == (ask, ark, data("vcek.testcer"))
    res = verify_snp_report(gosev_report(), coll, T_GOSEV, SMT_OK)
    assert res.status == "UpToDate"
    assert [f.check for f in res.failures] == ["debug"]


def test_cert_table_picks_the_key_the_report_names() -> None:
    vcek = certs("dstack_sev_snp_vcek.pem")[0]
    table = build_cert_table(
        [CertTableEntry(VLEK_GUID, data("vcek.testcer")), CertTableEntry(VCEK_GUID, vcek)]
    )
    assert collateral_from_cert_table(table).vek == vcek
    vlek_report = parse_snp(with_key_info(dstack_report(), 1 << 2))
    assert collateral_from_cert_table(table, report=vlek_report).vek == data("vcek.testcer")
    only_vcek = build_cert_table([CertTableEntry(VCEK_GUID, vcek)])
    coll = collateral_from_cert_table(only_vcek)
    assert (coll.vek, coll.ask, coll.ark) == (vcek, b"", b"")
    # The shipped ASK and ARK complete it.
    assert verify_snp_report(dstack_report(), coll, T_DSTACK, SMT_OK).ok


def test_cert_table_entries_must_hold_one_readable_certificate() -> None:
    two = data("ask_ark_milan.pem")
    with pytest.raises(VerifyError, match="2 certificates"):
        collateral_from_cert_table(build_cert_table([CertTableEntry(ASK_GUID, two)]))
    with pytest.raises(VerifyError):
        collateral_from_cert_table(build_cert_table([CertTableEntry(VCEK_GUID, b"junk")]))
    table = build_cert_table([CertTableEntry(VCEK_GUID, data("vcek.testcer"))])
    with pytest.raises(QuoteError, match="exceeds"):
        collateral_from_cert_table(table[:-1])


# -- files ------------------------------------------------------------------------------------


def test_collateral_from_a_file_and_a_directory(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(data("dstack_sev_snp_vcek.pem") + data("ask_ark_milan.pem"))
    coll = read_collateral_path(bundle)
    assert coll.vek and coll.ask and coll.ark
    assert verify_snp_report(dstack_report(), coll, T_DSTACK, SMT_OK).ok

    d = tmp_path / "dir"
    d.mkdir()
    (d / "vcek.der").write_bytes(data("vcek.testcer"))
    (d / "chain.pem").write_bytes(data("ask_ark_milan.pem"))
    (d / ".hidden").write_bytes(b"ignored")
    coll = read_collateral_path(d)
    assert coll.vek == data("vcek.testcer") and coll.source == str(d)
    assert verify_snp_report(gosev_report(), coll, T_GOSEV, SMT_OK).status == "UpToDate"

    for i in range(17):
        (d / f"x{i}.pem").write_bytes(b"")
    with pytest.raises(VerifyError, match="more than 16"):
        read_collateral_path(d)
    with pytest.raises(VerifyError):
        read_collateral_path(tmp_path / "missing.pem")
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "a.pem").write_bytes(data("dstack_sev_snp_vcek.pem"))
    (tmp_path / "both" / "b.der").write_bytes(data("vcek.testcer"))
    with pytest.raises(VerifyError, match="two different VEK"):
        read_collateral_path(tmp_path / "both")


async def test_load_collateral_path_runs_in_a_thread() -> None:
    coll = await load_collateral_path(DATA / "vcek.testcer")
    assert coll.vek


# -- KDS URLs -------------------------------------------------------------------------------


def test_kds_urls() -> None:
    r = parse_snp(gosev_report())
    chip = r.chip_id.hex()
    assert kds_vcek_path(r, SnpProduct.MILAN) == (
        f"/vcek/v1/Milan/{chip}?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68"
    )
    d = parse_snp(dstack_report())  # v3: the CPUID names Milan
    assert kds_vcek_path(d).startswith(f"/vcek/v1/Milan/{d.chip_id.hex()}?blSPL=4&")
    assert kds_cert_chain_path(SnpProduct.TURIN) == "/vcek/v1/Turin/cert_chain"
    tcb = int.from_bytes(bytes([9, 3, 1, 7, 0, 0, 0, 0x48]), "little")
    turin = parse_snp(
        synthetic_report(
            family=0x1A, model=0x02, reported_tcb=tcb, chip_id=bytes(range(1, 9)) + bytes(56)
        )
    )
    assert kds_vcek_path(turin) == (
        "/vcek/v1/Turin/0102030405060708?fmcSPL=9&blSPL=3&teeSPL=1&snpSPL=7&ucodeSPL=72"
    )
    with pytest.raises(VerifyError, match="names no known product"):
        kds_vcek_path(r)  # version 2: no CPUID
    with pytest.raises(VerifyError, match="masked"):
        kds_vcek_path(parse_snp(synthetic_report(chip_id=bytes(64))))
    with pytest.raises(VerifyError, match="CPUID names Milan"):
        kds_vcek_path(d, SnpProduct.GENOA)


# -- KDS through a loopback server ----------------------------------------------------------


@pytest.fixture
def kds() -> FakeKds:
    return gosev_kds()


@pytest.fixture
def report() -> bytes:
    return gosev_report()


@pytest.fixture
def files() -> dict[str, bytes]:
    """The vector files async tests need, read before the event loop runs."""
    names = ("vcek.testcer", "ask_ark_milan.pem", "ask_ark_genoa.pem")
    out = {n: data(n) for n in names}
    out["dstack"] = dstack_report()
    return out


async def test_kds_fetch_verify_and_cache(kds: FakeKds, report: bytes, tmp_path: Path) -> None:
    parsed = parse_snp(report)
    async with serve_kds(kds):
        client = KdsClient(base_url=kds.base_url, cache_dir=str(tmp_path / "kds"))
        coll = await client.collateral(parsed, SnpProduct.MILAN)
        res = await asyncio.to_thread(verify_snp_report, report, coll, T_GOSEV, SMT_OK)
        assert res.status == "UpToDate"
        assert [f.check for f in res.failures] == ["debug"]
        assert len(kds.requests) == 2
        assert kds.requests[0] == kds_vcek_path(parsed, SnpProduct.MILAN)
        assert kds.requests[1] == "/vcek/v1/Milan/cert_chain"

        # The second verification makes no request: memory cache.
        again = await client.collateral(parsed, SnpProduct.MILAN)
        assert again == coll and len(kds.requests) == 2 and client.fetches == 2
        # Nor does a new client over the same cache directory: disk cache.
        fresh = KdsClient(base_url=kds.base_url, cache_dir=str(tmp_path / "kds"))
        assert await fresh.collateral(parsed, SnpProduct.MILAN) == coll
        assert len(kds.requests) == 2 and fresh.fetches == 0
        names = sorted(await asyncio.to_thread(os.listdir, tmp_path / "kds"))
        assert names == [
            "cert_chain-Milan.pem",
            f"vcek-Milan-{parsed.chip_id.hex()}-{parsed.reported_tcb.raw:016x}.der",
        ]


async def test_kds_concurrent_requests_share_one_fetch(kds: FakeKds, report: bytes) -> None:
    parsed = parse_snp(report)
    async with serve_kds(kds):
        client = KdsClient(base_url=kds.base_url)
        got = await asyncio.gather(*(client.collateral(parsed, SnpProduct.MILAN) for _ in range(5)))
        assert len(set(got)) == 1
        assert len(kds.requests) == 2


async def test_kds_poisoned_disk_cache_is_refetched(
    kds: FakeKds, report: bytes, tmp_path: Path, files: dict[str, bytes]
) -> None:
    parsed = parse_snp(report)
    key = f"vcek-Milan-{parsed.chip_id.hex()}-{parsed.reported_tcb.raw:016x}.der"
    # Something that is not a VCEK signed by AMD's Milan ASK, planted in the cache, is
    # refused and replaced by what KDS answers.
    await asyncio.to_thread((tmp_path / key).write_bytes, files["ask_ark_milan.pem"])
    async with serve_kds(kds):
        client = KdsClient(base_url=kds.base_url, cache_dir=str(tmp_path))
        vek = await client.vcek(parsed, SnpProduct.MILAN)
        assert vek == files["vcek.testcer"]
        assert len(kds.requests) == 1
    assert await asyncio.to_thread((tmp_path / key).read_bytes) == files["vcek.testcer"]


async def test_kds_answers_that_are_refused(
    kds: FakeKds, report: bytes, files: dict[str, bytes]
) -> None:
    parsed = parse_snp(report)
    async with serve_kds(kds):
        client = KdsClient(base_url=kds.base_url)
        kds.status = 429
        with pytest.raises(CollateralUnavailable, match="429") as e:
            await client.vcek(parsed, SnpProduct.MILAN)
        assert e.value.retry_after == 7.0
        kds.status = 200
        kds.oversize = True
        with pytest.raises(CollateralUnavailable, match="exceeds"):
            await client.vcek(parsed, SnpProduct.MILAN)
        kds.oversize = False
        # A VCEK KDS does not know (another TCB) is a 404.
        other = parse_snp(files["dstack"])
        with pytest.raises(CollateralUnavailable, match="404"):
            await client.vcek(other)
        # Not AMD's: a chain whose "ARK" is Genoa's for Milan is not cached.
        kds.chains["Milan"] = files["ask_ark_genoa.pem"]
        with pytest.raises(VerifyError, match="not AMD's Milan root"):
            await client.cert_chain(SnpProduct.MILAN)
        # Nothing bad was cached: the good answer is fetched and kept.
        kds.chains["Milan"] = files["ask_ark_milan.pem"]
        ask, ark = await client.cert_chain(SnpProduct.MILAN)
        assert (ask, ark) == load_certificates(files["ask_ark_milan.pem"])
        n = len(kds.requests)
        await client.vcek(parsed, SnpProduct.MILAN)
        await client.vcek(parsed, SnpProduct.MILAN)
        assert len(kds.requests) == n + 1


async def test_kds_refuses_what_it_cannot_fetch(report: bytes, files: dict[str, bytes]) -> None:
    client = KdsClient(base_url="http://127.0.0.1:9")
    with pytest.raises(VerifyError, match="VLEK"):
        await client.vcek(parse_snp(with_key_info(files["dstack"], 1 << 2)))
    with pytest.raises(VerifyError, match="names no known product"):
        await client.vcek(parse_snp(report))
    assert client.fetches == 0


async def test_kds_unreachable(report: bytes) -> None:
    kds = FakeKds()
    async with serve_kds(kds):
        url = kds.base_url
    client = KdsClient(base_url=url, timeout=5.0)
    with pytest.raises(CollateralUnavailable):
        await client.vcek(parse_snp(report), SnpProduct.MILAN)


async def test_collateral_source_order(
    kds: FakeKds, report: bytes, tmp_path: Path, files: dict[str, bytes]
) -> None:
    table = build_cert_table([CertTableEntry(VCEK_GUID, files["vcek.testcer"])])
    async with serve_kds(kds):
        src = SnpCollateralSource(kds=KdsClient(base_url=kds.base_url))
        coll = await src.get(report, cert_table=table, product=SnpProduct.MILAN)
        assert coll.source == "cert-table" and kds.requests == []
        coll = await src.get(report, product=SnpProduct.MILAN)
        assert coll.source.startswith("kds:") and len(kds.requests) == 2
        vcek_file = tmp_path / "vcek.der"
        await asyncio.to_thread(vcek_file.write_bytes, files["vcek.testcer"])
        by_path = SnpCollateralSource(path=str(vcek_file))
        assert (await by_path.get(report)).vek == files["vcek.testcer"]
    with pytest.raises(VerifyError, match="no SEV-SNP VCEK"):
        await SnpCollateralSource().get(report)
    with pytest.raises(VerifyError, match="SEV-SNP report"):
        await SnpCollateralSource().get(report[:-1])


def test_verification_reason_codes_cover_kds_failures() -> None:
    # A KDS answer is only ever collateral: without it the report stays unverified.
    res = verify_snp_report(gosev_report(), None, T_GOSEV, SMT_OK)
    assert res.status == "Unverified" and res.reasons[0] is SnpReason.COLLATERAL_MISSING
