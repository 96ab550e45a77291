"""A loopback Intel PCCS serving the real dcap-qvl collateral, in the API dcap-qvl speaks.

Intel "Provisioning Certification Service for ECDSA Attestation" API v4 as dcap-qvl's
``get_collateral`` reads it: ``/sgx/certification/v4/pckcrl?ca=...&encoding=der`` (DER, the
issuer chain URL-encoded in ``SGX-PCK-CRL-Issuer-Chain``), ``/sgx/certification/v4/rootcacrl``
(hex of the DER), ``/{sgx,tdx}/certification/v4/tcb?fmspc=...`` (``{"tcbInfo":...,
"signature":...}``, chain in ``TCB-Info-Issuer-Chain``) and ``.../qe/identity``
(``{"enclaveIdentity":...,"signature":...}``, chain in ``SGX-Enclave-Identity-Issuer-Chain``).
Every request is counted.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class FakePccs:
    collateral_json: str
    requests: list[str] = field(default_factory=list)
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(str(request.rel_url))
        d = json.loads(self.collateral_json)
        path = request.path

        def chain(name: str) -> str:
            return urllib.parse.quote(d[name])

        if path.endswith("/pckcrl"):
            return web.Response(
                body=bytes.fromhex(d["pck_crl"]),
                headers={"SGX-PCK-CRL-Issuer-Chain": chain("pck_crl_issuer_chain")},
            )
        if path.endswith("/rootcacrl"):
            return web.Response(text=d["root_ca_crl"])
        if path.endswith("/tcb"):
            body = f'{{"tcbInfo":{d["tcb_info"]},"signature":"{d["tcb_info_signature"]}"}}'
            return web.Response(
                text=body, headers={"TCB-Info-Issuer-Chain": chain("tcb_info_issuer_chain")}
            )
        if path.endswith("/qe/identity"):
            body = (
                f'{{"enclaveIdentity":{d["qe_identity"]},'
                f'"signature":"{d["qe_identity_signature"]}"}}'
            )
            return web.Response(
                text=body,
                headers={"SGX-Enclave-Identity-Issuer-Chain": chain("qe_identity_issuer_chain")},
            )
        return web.Response(status=404)


@asynccontextmanager
async def serve_pccs(pccs: FakePccs) -> AsyncIterator[FakePccs]:
    """Run ``pccs`` on 127.0.0.1 (ephemeral port); ``base_url`` is its v4 SGX base."""
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", pccs.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        pccs.base_url = f"http://127.0.0.1:{port}/sgx/certification/v4"
        yield pccs
    finally:
        await runner.cleanup()
