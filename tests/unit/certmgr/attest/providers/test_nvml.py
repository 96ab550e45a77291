"""certmgr.attest.providers.nvml against a fake of NVML's interface (no GPU here) that
answers with the real H100 evidence bytes."""

from __future__ import annotations

import pytest

from certmgr.attest.nvidia import GpuArch, parse_spdm_report
from certmgr.attest.providers.nvml import NvmlGpuSource, load_nvml
from certmgr.errors import QuoteProviderError
from tests.helpers.nvidia import (
    H100_NONCE,
    FakeGpu,
    FakeNvml,
    h100_chain,
    h100_report,
    real_h100_gpu,
)


def test_state_modes() -> None:
    assert NvmlGpuSource(FakeNvml([real_h100_gpu()])).state().mode == "cc"
    assert NvmlGpuSource(FakeNvml([real_h100_gpu()], devtools=1)).state().mode == "devtools"
    assert NvmlGpuSource(FakeNvml([real_h100_gpu()], cc=0)).state().mode == "off"
    s = NvmlGpuSource(FakeNvml([real_h100_gpu(), real_h100_gpu()])).state()
    assert (s.count, s.architectures, s.environment, s.attestable) == (
        2, ("HOPPER", "HOPPER"), "production", True,
    )  # fmt: skip
    ampere = NvmlGpuSource(FakeNvml([FakeGpu(lambda n: b"", b"", arch_code=7)])).state()
    assert ampere.architectures == ("OTHER-7",) and not ampere.attestable


def test_collect_returns_the_real_bytes_and_passes_the_nonce() -> None:
    fake = FakeNvml([real_h100_gpu()])
    (ev,) = NvmlGpuSource(fake).collect(H100_NONCE)
    assert fake.nonces == [H100_NONCE]
    assert ev.report == h100_report() and ev.chain_pem == h100_chain()
    assert ev.arch is GpuArch.HOPPER and ev.nonce == H100_NONCE
    assert ev.extra == {"driver_version": "550.90.07", "vbios_version": "96.00.9F.00.01"}
    assert parse_spdm_report(ev.report).request_nonce == H100_NONCE


def test_errors_are_provider_errors() -> None:
    with pytest.raises(QuoteProviderError, match="nonce must be 32"):
        NvmlGpuSource(FakeNvml([real_h100_gpu()])).collect(b"short")
    with pytest.raises(QuoteProviderError, match="attestation report: report: Unknown Error"):
        NvmlGpuSource(FakeNvml([real_h100_gpu()], fail="report")).collect(H100_NONCE)
    with pytest.raises(QuoteProviderError, match="confidential-computing state"):
        NvmlGpuSource(FakeNvml([real_h100_gpu()], fail="state")).state()
    with pytest.raises(QuoteProviderError, match="gives no evidence"):
        NvmlGpuSource(FakeNvml([FakeGpu(lambda n: b"x", b"x", arch_code=8)])).collect(H100_NONCE)
    empty = FakeNvml([FakeGpu(lambda n: b"", h100_chain())])
    with pytest.raises(QuoteProviderError, match="answer of 0 bytes"):
        NvmlGpuSource(empty).collect(H100_NONCE)


def test_no_nvml_library_here_means_no_source() -> None:
    assert load_nvml() is None  # nvidia-ml-py is installed; libnvidia-ml.so is not
