"""certmgr.attest.nvidia_collateral: RIM files and directories, a loopback RIM service and
OCSP responder standing in for NVIDIA's (real peers on 127.0.0.1), the on-disk cache, and
OCSP modes that never touch the network unless asked to."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509 import ocsp

from certmgr.attest.nvidia_chain import fingerprint
from certmgr.attest.nvidia_collateral import (
    MAX_RIM_FILES,
    NvidiaCollateralSource,
    read_rim_paths,
)
from certmgr.attest.nvidia_verify import GpuPolicy, OcspMode, verify_device
from certmgr.errors import VerifyError
from tests.helpers.nvidia import (
    DATA,
    RIM_FILES,
    T_OWN,
    OwnDevice,
    h100_evidence,
    ocsp_response,
    own_device,
    rim_signer,
    rim_xml,
)


def test_rim_files_and_directories_are_read() -> None:
    assert len(read_rim_paths([DATA])) == 3
    assert read_rim_paths([DATA / RIM_FILES[0]]) == ((DATA / RIM_FILES[0]).read_bytes(),)
    with pytest.raises(VerifyError, match="RIM"):
        read_rim_paths([DATA / "missing.swidtag"])


def test_too_many_rim_files_are_refused(tmp_path: Path) -> None:
    for i in range(MAX_RIM_FILES + 1):
        (tmp_path / f"{i}.xml").write_bytes(b"<a/>")
    with pytest.raises(VerifyError, match="more than"):
        read_rim_paths([tmp_path])


class Peers:
    """A RIM service and an OCSP responder on loopback."""

    def __init__(self, dev: OwnDevice) -> None:
        self.dev = dev
        self.rims: dict[str, bytes] = {}
        self.rim_hits: list[str] = []
        self.ocsp_hits = 0
        self.echo_nonce = True
        self.url = ""

    async def rim(self, request: web.Request) -> web.Response:
        rim_id = request.match_info["id"]
        self.rim_hits.append(rim_id)
        if rim_id not in self.rims:
            return web.Response(status=404)
        body = {"id": rim_id, "rim": base64.b64encode(self.rims[rim_id]).decode()}
        return web.json_response(body)

    async def ocsp(self, request: web.Request) -> web.Response:
        self.ocsp_hits += 1
        req = ocsp.load_der_ocsp_request(await request.read())
        chain = self.dev.chain
        index = next(i for i, c in enumerate(chain) if c.cert.serial_number == req.serial_number)
        nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        der = ocsp_response(
            chain[index].cert, chain[index + 1], nonce=nonce if self.echo_nonce else b"x" * 32
        )
        return web.Response(body=der, content_type="application/ocsp-response")


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    dev = await asyncio.to_thread(own_device)
    p = Peers(dev)
    app = web.Application()
    app.router.add_get("/v1/rim/{id}", p.rim)
    app.router.add_post("/ocsp", p.ocsp)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    p.url = f"http://127.0.0.1:{port}"
    yield p
    await runner.cleanup()


async def test_rims_are_fetched_by_nvidias_ids_and_cached(peers: Peers, tmp_path: Path) -> None:
    dev = peers.dev
    signer = await asyncio.to_thread(rim_signer)
    golden = {i - 1: (v,) for i, v in dev.measurements().items()}
    drv = await asyncio.to_thread(
        signer.sign, rim_xml("550.90.07", {i: golden[i] for i in range(20, 40)})
    )
    vb = await asyncio.to_thread(
        signer.sign, rim_xml("96.00.9f.00.01", {i: golden[i] for i in range(20)})
    )
    peers.rims = {
        "NV_GPU_DRIVER_GH100_550.90.07": drv,
        "NV_GPU_VBIOS_1010_0200_882_96009F0001": vb,
    }
    nonce = b"\x07" * 32
    ev = await asyncio.to_thread(dev.evidence, nonce)
    source = NvidiaCollateralSource(rim_url=peers.url + "/v1/rim/", cache_dir=str(tmp_path))
    coll = await source.get([ev], T_OWN)
    assert sorted(coll.rims) == sorted([drv, vb])
    assert sorted(peers.rim_hits) == sorted(peers.rims)
    cached = tmp_path / "nvidia-rim" / "NV_GPU_DRIVER_GH100_550.90.07.swidtag"
    assert await asyncio.to_thread(cached.read_bytes) == drv
    # Cached: not fetched again.
    again = await source.get([ev], T_OWN)
    assert sorted(again.rims) == sorted(coll.rims) and len(peers.rim_hits) == 2
    coll = type(coll)(rims=coll.rims, rim_root=signer.root.cert, device_root=dev.root.cert)
    r = await asyncio.to_thread(verify_device, ev, nonce, T_OWN, GpuPolicy(), coll)
    assert r.trusted, r.failures


async def test_a_rim_the_service_does_not_have_leaves_the_measurements_unjudged(
    peers: Peers,
) -> None:
    ev = await asyncio.to_thread(h100_evidence)
    source = NvidiaCollateralSource(rim_url=peers.url + "/v1/rim/")
    coll = await source.get([ev], T_OWN)
    assert coll.rims == ()
    assert sorted(peers.rim_hits) == [
        "NV_GPU_DRIVER_GH100_550.90.07",
        "NV_GPU_VBIOS_1010_0200_882_96009F0001",
    ]
    dead = NvidiaCollateralSource(rim_url="http://127.0.0.1:9/v1/rim/")
    with pytest.raises(VerifyError, match=r"127\.0\.0\.1:9"):
        await dead.get([ev], T_OWN)


async def test_cached_ocsp_mode_never_asks_and_require_asks_once(
    peers: Peers, tmp_path: Path
) -> None:
    dev = peers.dev
    ev = await asyncio.to_thread(dev.evidence, b"\x07" * 32)
    cached = NvidiaCollateralSource(
        ocsp=OcspMode.CACHED, ocsp_url=peers.url + "/ocsp", cache_dir=str(tmp_path)
    )
    assert (await cached.get([ev], T_OWN)).ocsp == {}
    assert peers.ocsp_hits == 0
    require = NvidiaCollateralSource(
        ocsp=OcspMode.REQUIRE, ocsp_url=peers.url + "/ocsp", cache_dir=str(tmp_path)
    )
    coll = await require.get([ev], T_OWN)
    assert set(coll.ocsp) == {fingerprint(c.cert) for c in dev.chain[1:-1]}
    assert peers.ocsp_hits == 3
    # Now cached and current: answered from the cache, in either mode.
    assert (await require.get([ev], T_OWN)).ocsp == coll.ocsp and peers.ocsp_hits == 3
    assert (await cached.get([ev], T_OWN)).ocsp == coll.ocsp
    off = NvidiaCollateralSource(ocsp=OcspMode.OFF, cache_dir=str(tmp_path))
    assert (await off.get([ev], T_OWN)).ocsp == {}


async def test_an_ocsp_answer_without_our_nonce_is_refused(peers: Peers) -> None:
    peers.echo_nonce = False
    ev = await asyncio.to_thread(peers.dev.evidence, b"\x07" * 32)
    require = NvidiaCollateralSource(ocsp=OcspMode.REQUIRE, ocsp_url=peers.url + "/ocsp")
    with pytest.raises(VerifyError, match="nonce differs"):
        await require.get([ev], T_OWN)
