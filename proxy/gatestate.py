"""The governance state: what the supervisor publishes and every worker obeys.

One small JSON file, ``STATE_DIR/governance/state.json``, written atomically by the
supervisor (:mod:`proxy.control.governance`) after each policy round and read by each
worker's gate (:mod:`proxy.dataplane.gate`). A file is the interface so that the two
processes share nothing else; its size is capped before it is parsed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from proxy.config import Config

__all__ = ["MAX_STATE_FILE", "GateState", "state_path"]

STATE_FILE = "governance/state.json"
MAX_STATE_FILE = 64 * 1024


@dataclass(frozen=True, slots=True)
class GateState:
    """What the supervisor tells the workers (and the admin endpoint shows)."""

    mode: str
    serving: bool
    verdict: str
    reason: str
    measurement_id: str
    version: int | None = None
    block_number: int | None = None
    confirmed_at: float | None = None
    written_at: float = 0.0
    latched: bool = False  # stopped, and resume_when_allowed = false: stays stopped

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> GateState:
        if len(data) > MAX_STATE_FILE:
            raise ValueError("governance state file too large")
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("governance state is not an object")
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        state = cls(**fields)
        if not isinstance(state.serving, bool) or not isinstance(state.reason, str):
            raise ValueError("governance state has wrong types")
        return state


def state_path(cfg: Config) -> Path:
    return Path(cfg.state_dir) / STATE_FILE
