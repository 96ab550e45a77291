"""The embedded development chain (``teeproxy demo``) registers the proxy's own receipt signer.

A governor with the simulated attestation provider starts the in-process EVM exactly as the
demo does; the signing address bound in the RA-TLS certificate must then be registered for
the governed measurement, so a receipt signed by the proxy's sealed key verifies on that
chain through its JSON-RPC listener. With receipts off, nothing is registered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from certmgr.attest.ratls import parse_certificate
from certmgr.attest.ratls_store import ratls_dir
from certmgr.policy.artifacts import ABI
from certmgr.receipts.signing import load_signing_key, sign_receipt
from proxy.config import Config, loads
from proxy.control.attestation import prepare_attestation
from proxy.control.governance import Governor, governed_measurement_id
from proxy.runtime import build_runtime, sealer_for
from tests.helpers.chain import web3_for


def _config(state: Path, extra: str = "") -> Config:
    return loads(
        f'state_dir = "{state}"\n[attestation]\nprovider = "simulated"\n'
        '[governance]\nmode = "monitor"\nself_measurement = "auto"\nembedded_chain = true\n'
        'embedded_chain_listen = "127.0.0.1:0"\n' + extra
    )


async def _start(cfg: Config) -> Governor:
    runtime = await asyncio.to_thread(build_runtime, cfg, prepare=True)
    mid = governed_measurement_id(cfg.governance, runtime)
    signer = runtime.signing_key.address if runtime.signing_key is not None else None
    gov = Governor(cfg, mid, signer=signer)
    await gov.start()
    return gov


async def test_demo_chain_verifies_the_proxys_own_receipts(tmp_path: Path) -> None:
    cfg = await asyncio.to_thread(_config, tmp_path)
    gov = await _start(cfg)
    try:
        assert gov.chain is not None
        # What a verifier learns from the attestation: the certificate's signing address.
        await asyncio.to_thread(
            prepare_attestation,
            cfg,
            await asyncio.to_thread(build_runtime, cfg, prepare=True, sealer=sealer_for(cfg)),
        )
        pem = await asyncio.to_thread((ratls_dir(tmp_path) / "ratls.pem").read_bytes)
        attested = parse_certificate(pem).claims["signing-address"]
        key = await asyncio.to_thread(load_signing_key, tmp_path, sealer_for(cfg))
        assert attested == "0x" + key.address.hex()
        receipt = sign_receipt(
            key,
            request_sha256=hashlib.sha256(b"{}").digest(),
            response_sha256=hashlib.sha256(b'{"id":"demo"}').digest(),
            model="teeproxy-demo",
            response_id="demo",
            timestamp=1_763_740_800,
            measurement_id=gov.measurement_id,
        )
        w3 = web3_for(gov.chain.url)
        try:
            c = w3.eth.contract(address=gov.chain.address, abi=ABI)
            signer = w3.to_checksum_address(attested)
            assert await c.functions.signerMeasurement(signer).call() == gov.measurement_id
            fields = (
                receipt.request_sha256,
                receipt.response_sha256,
                receipt.model,
                receipt.response_id,
                receipt.timestamp,
                receipt.measurement_id,
            )
            valid, recovered = await c.functions.verifyReceipt(*fields, receipt.signature).call()
            assert (valid, recovered) == (True, signer)
        finally:
            await w3.provider.disconnect()  # type: ignore[attr-defined]
        info = json.loads(
            await asyncio.to_thread((tmp_path / "governance" / "embedded-chain.json").read_text)
        )
        assert info["signers"] == [attested]
    finally:
        await gov.close()


async def test_no_signer_registered_with_receipts_off(tmp_path: Path) -> None:
    cfg = await asyncio.to_thread(_config, tmp_path, "[receipts]\nenabled = false\n")
    gov = await _start(cfg)
    try:
        info = json.loads(
            await asyncio.to_thread((tmp_path / "governance" / "embedded-chain.json").read_text)
        )
        assert info["signers"] == []
        assert not await asyncio.to_thread((tmp_path / "signing").exists)  # no key generated
    finally:
        await gov.close()
