"""NVIDIA's roots of trust for GPU attestation, shipped as trust anchors: data only.

- :data:`DEVICE_ROOT_PEM`, the **NVIDIA Device Identity CA** (ECDSA P-384, self-signed,
  valid 2021-11-05 .. 9999-12-31): every GPU and NVSwitch attestation chain ends in it
  (FMC/GSP leaf <- BROM <- Provisioner ICA <- GH100 Identity <- this CA).
- :data:`RIM_ROOT_PEM`, the **NVIDIA CoRIM signing Root CA** (ECDSA P-384, valid
  2023-03-16 .. 2053-03-08): the signing chains of driver and VBIOS reference integrity
  manifests (RIMs) end in it.

The PEM text is NVIDIA's own, from NVIDIA/nvtrust
``guest_tools/gpu_verifiers/local_gpu_verifier/src/verifier/certs/verifier_{device,RIM}_root.pem``
(commit 028173093d43dbf37364bdc39ad7e696bccbce2e). Each is pinned by the SHA-256 of its DER:
:func:`certmgr.attest.nvidia_verify.nvidia_anchors` refuses to verify with a shipped root
that does not match its pin, and a chain is accepted only when its last certificate is
byte-identical to the pinned root.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEVICE_ROOT_PEM", "DEVICE_ROOT_SHA256", "RIM_ROOT_PEM", "RIM_ROOT_SHA256"]

DEVICE_ROOT_SHA256: Final = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
RIM_ROOT_SHA256: Final = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"

# CN=NVIDIA Device Identity CA, O=NVIDIA
DEVICE_ROOT_PEM: Final = b"""\
-----BEGIN CERTIFICATE-----
MIICCzCCAZCgAwIBAgIQLTZwscoQBBHB/sDoKgZbVDAKBggqhkjOPQQDAzA1MSIw
IAYDVQQDDBlOVklESUEgRGV2aWNlIElkZW50aXR5IENBMQ8wDQYDVQQKDAZOVklE
SUEwIBcNMjExMTA1MDAwMDAwWhgPOTk5OTEyMzEyMzU5NTlaMDUxIjAgBgNVBAMM
GU5WSURJQSBEZXZpY2UgSWRlbnRpdHkgQ0ExDzANBgNVBAoMBk5WSURJQTB2MBAG
ByqGSM49AgEGBSuBBAAiA2IABA5MFKM7+KViZljbQSlgfky/RRnEQScW9NDZF8SX
gAW96r6u/Ve8ZggtcYpPi2BS4VFu6KfEIrhN6FcHG7WP05W+oM+hxj7nyA1r1jkB
2Ry70YfThX3Ba1zOryOP+MJ9vaNjMGEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwHQYDVR0OBBYEFFeF/4PyY8xlfWi3Olv0jUrL+0lfMB8GA1UdIwQY
MBaAFFeF/4PyY8xlfWi3Olv0jUrL+0lfMAoGCCqGSM49BAMDA2kAMGYCMQCPeFM3
TASsKQVaT+8S0sO9u97PVGCpE9d/I42IT7k3UUOLSR/qvJynVOD1vQKVXf0CMQC+
EY55WYoDBvs2wPAH1Gw4LbcwUN8QCff8bFmV4ZxjCRr4WXTLFHBKjbfneGSBWwA=
-----END CERTIFICATE-----
"""

# CN=NVIDIA CoRIM signing Root CA, O=NVIDIA, C=US
RIM_ROOT_PEM: Final = b"""\
-----BEGIN CERTIFICATE-----
MIICKTCCAbCgAwIBAgIQRdrjoA5QN73fh1N17LXicDAKBggqhkjOPQQDAzBFMQsw
CQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxOVklESUEgQ29S
SU0gc2lnbmluZyBSb290IENBMCAXDTIzMDMxNjE1MzczNFoYDzIwNTMwMzA4MTUz
NzM0WjBFMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxO
VklESUEgQ29SSU0gc2lnbmluZyBSb290IENBMHYwEAYHKoZIzj0CAQYFK4EEACID
YgAEuECyi9vNM+Iw2lfUzyBldHAwaC1HF7TCgp12QcEyUTm3Tagxwr48d55+K2VI
lWYIDk7NlAIQdcV/Ff7euGLI+Qauj93HsSI4WX298PpW54RTgz9tC+Q684caR/BX
WEeZo2MwYTAdBgNVHQ4EFgQUpaXrOPK4ZDAk08DBskn594zeZjAwHwYDVR0jBBgw
FoAUpaXrOPK4ZDAk08DBskn594zeZjAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwCgYIKoZIzj0EAwMDZwAwZAIwHGDyscDP6ihHqRvZlI3eqZ4YkvjE
1duaN84tAHRVgxVMvNrp5Tnom3idHYGW/dskAjATvjIx6VzHm/4e2GiZAyZEIUBD
OKPzp5ei/A0iUZpdvngenDwV8Qa/wGdiTmJ7Bp4=
-----END CERTIFICATE-----
"""
