"""Predicted registers and the teeproxy measurement id, per target.

Pure: no I/O. A :class:`Prediction` is a :class:`certmgr.attest.measurement.Measurement`
built from release inputs instead of parsed from a quote, so its
:func:`~certmgr.attest.measurement.measurement_id` is by construction the id the verifier
computes from a quote of that build (one definition, docs/ATTESTATION.md).

Targets:

- ``dstack-tdx``: MRTD and RTMR0-2 come from the dstack OS image (its published values:
  they are the firmware, kernel, initrd and command line of the OS, not of the app);
  RTMR3 is the fold of the runtime events over the compose hash
  (:mod:`certmgr.release.dstack_compose`); MRCONFIGID is version 1 over the compose hash
  (or zero when the VMM sets none).
- ``sev-snp``: MEASUREMENT is the launch digest (:mod:`certmgr.release.snp_launch`),
  HOST_DATA what the host passes at launch (zero unless it sets some).
- ``simulated-tdx``: teeproxy's simulated provider (development only: its quotes prove
  nothing) configured with ``simulated_mr_config_id`` = the dstack MRCONFIGID of this
  compose: MRTD is the simulated TD's, RTMR0-3 zero. It lets the whole release chain run
  on a machine with no TEE.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from certmgr.attest.measurement import Measurement, TeeType, measurement_id
from certmgr.attest.simulated import SIMULATED_MR_TD
from certmgr.errors import ReleaseError
from certmgr.release.dstack_compose import (
    DstackRuntime,
    check_image_references,
    compose_hash,
    mr_config_id_v1,
    predicted_rtmr3,
    runtime_events,
)

__all__ = [
    "TARGETS",
    "Prediction",
    "TdxOsMeasurement",
    "parse_hex",
    "predict_dstack",
    "predict_simulated",
    "predict_snp",
    "recompute",
]

TARGETS = ("dstack-tdx", "sev-snp", "simulated-tdx")


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a build of ``target`` will measure; ``inputs`` says from what (JSON values)."""

    target: str
    measurement: Measurement
    inputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def measurement_id(self) -> bytes:
        return measurement_id(self.measurement)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "tee": self.measurement.tee.value,
            "measurement_id": "0x" + self.measurement_id.hex(),
            "registers": self.measurement.registers(),
            "inputs": dict(self.inputs),
        }


def _hex48(doc: Mapping[str, Any], *names: str) -> bytes:
    for name in names:
        value = doc.get(name)
        if value is None:
            continue
        return parse_hex(value, f"OS measurement {name}", 48)
    raise ReleaseError(f"OS measurement: {names[0]} is missing")


@dataclass(frozen=True, slots=True)
class TdxOsMeasurement:
    """MRTD and RTMR0-2 of a dstack OS image (firmware, ACPI, kernel, initrd, command line)."""

    mr_td: bytes
    rt_mr0: bytes
    rt_mr1: bytes
    rt_mr2: bytes

    @classmethod
    def from_json(cls, doc: Any) -> TdxOsMeasurement:
        """From ``{"mrtd", "rtmr0", "rtmr1", "rtmr2"}`` (hex; dstack's names, as in a guest
        agent's ``Info`` tcb_info), or the same with teeproxy's ``mr_td``/``rt_mr0``..."""
        if not isinstance(doc, Mapping):
            raise ReleaseError("OS measurement: expected a JSON object")
        return cls(
            _hex48(doc, "mrtd", "mr_td"),
            _hex48(doc, "rtmr0", "rt_mr0"),
            _hex48(doc, "rtmr1", "rt_mr1"),
            _hex48(doc, "rtmr2", "rt_mr2"),
        )

    def to_json(self) -> dict[str, str]:
        return {
            "mrtd": self.mr_td.hex(),
            "rtmr0": self.rt_mr0.hex(),
            "rtmr1": self.rt_mr1.hex(),
            "rtmr2": self.rt_mr2.hex(),
        }


def predict_dstack(
    os: TdxOsMeasurement,
    compose: bytes,
    runtime: DstackRuntime,
    *,
    mr_config_id: bool = True,
    inputs: Mapping[str, Any] | None = None,
) -> Prediction:
    """The registers of a dstack CVM running the app whose compose hash is ``compose``."""
    events = runtime_events(compose, runtime)
    m = Measurement(
        tee=TeeType.TDX,
        debug=False,
        mr_td=os.mr_td,
        rt_mr0=os.rt_mr0,
        rt_mr1=os.rt_mr1,
        rt_mr2=os.rt_mr2,
        rt_mr3=predicted_rtmr3(events),
        mr_config_id=mr_config_id_v1(compose) if mr_config_id else bytes(48),
    )
    described = {
        "compose_hash": compose.hex(),
        "os": os.to_json(),
        "mr_config_id": "v1" if mr_config_id else "zero",
        "runtime_events": [{"event": n, "payload": p.hex()} for n, p in events],
        **(inputs or {}),
    }
    return Prediction("dstack-tdx", m, described)


def predict_simulated(compose: bytes, *, inputs: Mapping[str, Any] | None = None) -> Prediction:
    """teeproxy's simulated TD with ``simulated_mr_config_id`` = MRCONFIGID v1 of ``compose``."""
    config_id = mr_config_id_v1(compose)
    m = Measurement(
        tee=TeeType.TDX,
        debug=False,
        mr_td=SIMULATED_MR_TD,
        rt_mr0=bytes(48),
        rt_mr1=bytes(48),
        rt_mr2=bytes(48),
        rt_mr3=bytes(48),
        mr_config_id=config_id,
    )
    described = {
        "compose_hash": compose.hex(),
        "simulated_mr_config_id": config_id.hex(),
        **(inputs or {}),
    }
    return Prediction("simulated-tdx", m, described)


def predict_snp(
    launch_digest: bytes, *, host_data: bytes = bytes(32), inputs: Mapping[str, Any] | None = None
) -> Prediction:
    """A SEV-SNP guest whose launch digest is ``launch_digest`` (48 bytes)."""
    if len(launch_digest) != 48:
        raise ReleaseError("an SEV-SNP launch digest is 48 bytes")
    if len(host_data) != 32:
        raise ReleaseError("SEV-SNP HOST_DATA is 32 bytes")
    m = Measurement(
        tee=TeeType.SEV_SNP, debug=False, measurement=launch_digest, host_data=host_data
    )
    return Prediction("sev-snp", m, dict(inputs or {}))


def parse_hex(value: Any, what: str, size: int | None = None) -> bytes:
    """Hex text (``0x`` optional) as bytes, of ``size`` bytes when given; ``what`` names it
    in the :class:`ReleaseError`."""
    if not isinstance(value, str):
        raise ReleaseError(f"{what}: expected hex text")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError as e:
        raise ReleaseError(f"{what}: not hex") from e
    if size is not None and len(raw) != size:
        raise ReleaseError(f"{what}: {len(raw)} bytes, expected {size}")
    return raw


def recompute(target: str, inputs: Mapping[str, Any], image_digest: str) -> Prediction:
    """The prediction of ``target`` re-derived from a manifest's recorded ``inputs``.

    For ``dstack-tdx`` and ``simulated-tdx``: the recorded ``app_compose`` text must
    reference ``image_digest`` (pinned), its SHA-256 is the compose hash, the runtime
    events must carry that hash (and, with no app id given, its first 20 bytes as the app
    id), and every register is computed again from them. ``sev-snp`` needs the launch files
    (:mod:`certmgr.release.snp_launch`); here its recorded launch digest is only re-hashed.
    """
    if target in ("dstack-tdx", "simulated-tdx"):
        text = inputs.get("app_compose")
        if not isinstance(text, str):
            raise ReleaseError(f"{target}: the manifest records no app_compose text")
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ReleaseError(f"{target}: app_compose is not JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("docker_compose_file"), str):
            raise ReleaseError(f"{target}: app_compose has no docker_compose_file")
        check_image_references(doc["docker_compose_file"], image_digest)
        compose = compose_hash(text.encode("utf-8"))
        if parse_hex(inputs.get("compose_hash"), "compose_hash", 32) != compose:
            raise ReleaseError(f"{target}: the recorded compose hash is not the app_compose's")
        if target == "simulated-tdx":
            return predict_simulated(compose, inputs=_keep(inputs))
        events = inputs.get("runtime_events")
        if not isinstance(events, list):
            raise ReleaseError("dstack-tdx: runtime_events missing")
        named: dict[str, bytes] = {}
        for event in events:
            if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                raise ReleaseError("dstack-tdx: malformed runtime event")
            named.setdefault(event["event"], parse_hex(event.get("payload"), event["event"]))
        if named.get("compose-hash") != compose:
            raise ReleaseError("dstack-tdx: the compose-hash event is not the app_compose's hash")
        runtime = _runtime_from_events(events)
        os = TdxOsMeasurement.from_json(inputs.get("os"))
        return predict_dstack(
            os,
            compose,
            runtime,
            mr_config_id=inputs.get("mr_config_id") == "v1",
            inputs=_keep(inputs),
        )
    if target == "sev-snp":
        digest = parse_hex(inputs.get("launch_digest"), "launch_digest", 48)
        host = parse_hex(inputs.get("host_data", "00" * 32), "host_data", 32)
        return predict_snp(digest, host_data=host, inputs=dict(inputs))
    raise ReleaseError(f"unknown target {target!r}")


_DERIVED = ("compose_hash", "os", "mr_config_id", "runtime_events", "simulated_mr_config_id")


def _keep(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k not in _DERIVED}


def _runtime_from_events(events: list[dict[str, Any]]) -> DstackRuntime:
    """The deployment inputs back from a recorded event list in dstack's order."""
    fixed = {"system-preparing", "compose-hash", "boot-mr-done"}
    values: dict[str, bytes] = {}
    app_events: list[tuple[str, bytes]] = []
    ready = False
    for e in events:
        name, payload = e["event"], parse_hex(e.get("payload"), e["event"])
        if ready:
            app_events.append((name, payload))
        elif name == "system-ready":
            ready = True
        elif name not in fixed:
            values[name] = payload
    if not ready or "key-provider" not in values:
        raise ReleaseError("dstack-tdx: runtime events lack key-provider or system-ready")
    return DstackRuntime(
        key_provider=values["key-provider"],
        instance_id=values.get("instance-id", b""),
        app_id=values.get("app-id"),
        storage_fs=values.get("storage-fs", b"zfs").decode("ascii", "replace"),
        gpu_policy_hash=values.get("gpu-policy-hash"),
        mr_kms=values.get("mr-kms"),
        os_image_hash=values.get("os-image-hash"),
        app_events=tuple(app_events),
    )
