"""A valid enforcing [governance] section and policy decisions, for the gate tests."""

from __future__ import annotations

from certmgr.policy.model import PolicyDecision, PolicyStatus
from proxy.config import GovernanceConfig

ADDR = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


MID = b"\x01" * 32


ENFORCE = GovernanceConfig(
    mode="enforce", rpc_urls=("http://127.0.0.1:8545",), contract=ADDR, self_measurement="dev"
)


def decision(verdict: PolicyStatus, version: int = 3) -> PolicyDecision:
    """A decision with ``verdict`` whose reason is ``because <verdict>``."""
    return PolicyDecision(verdict, f"because {verdict}", version=version, block_number=9, age=2.0)
