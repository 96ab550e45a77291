"""The kernel side of Linux configfs-tsm, for the providers that read it.

Documentation/ABI/testing/configfs-tsm: a report entry is a directory under
``/sys/kernel/config/tsm/report/`` holding ``provider`` (``tdx_guest`` / ``sev_guest``),
``generation`` (counts writes to ``inblob``), ``inblob`` (written: 64 bytes of report
data), ``outblob`` (read: the report over the last inblob) and, where the backend emits
it, ``auxblob`` (read: supplemental data of the same report; for ``sev_guest`` the
extended report's certificate table). Reading ``outblob`` makes the report.

:class:`FakeTsm` builds such entries in a temporary directory: ``outblob`` is a FIFO
served by one thread per entry, which reads ``inblob`` when our reader opens it, bumps
``generation``, writes ``auxblob`` (``sev_guest`` only: ``tdx_guest`` has no such
attribute) and then the report. configfs creates an entry's attributes on ``mkdir``;
here they exist beforehand (:meth:`FakeTsm.add_entry`, the provider's mkdir then finds
the directory), and :meth:`FakeTsm.watch` adds the entry of every child process of a
``teeproxy serve`` (its workers) as soon as the child appears.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers.serve import child_pids

Respond = Callable[[bytes], tuple[bytes, bytes]]  # inblob -> (outblob, auxblob)


class FakeTsm:
    """A configfs-tsm report root with entries served by threads (see the module doc)."""

    def __init__(self, root: Path, provider: str, respond: Respond) -> None:
        self.root = root
        self.provider = provider
        self.respond = respond
        self.requests: list[bytes] = []  # every inblob answered, in order
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._entries: set[str] = set()
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def add_entry(self, name: str) -> Path:
        """The entry ``name`` (``teeproxy-PID``), populated and served."""
        with self._lock:
            entry = self.root / name
            if name in self._entries:
                return entry
            self._entries.add(name)
        entry.mkdir(exist_ok=True)
        (entry / "provider").write_text(f"{self.provider}\n")
        (entry / "generation").write_text("0\n")
        if self.provider == "sev_guest":
            (entry / "auxblob").write_bytes(b"")
        os.mkfifo(entry / "outblob")
        t = threading.Thread(target=self._serve, args=(entry,), daemon=True)
        t.start()
        self._threads.append(t)
        return entry

    def add_pid(self, pid: int) -> Path:
        return self.add_entry(f"teeproxy-{pid}")

    def watch(self, pid: int) -> None:
        """Serve ``pid`` and, from now on, every child it starts (polled every 2 ms)."""
        self.add_pid(pid)

        def run() -> None:
            while not self._stop.is_set():
                for child in child_pids(pid):
                    self.add_pid(child)
                time.sleep(0.002)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._threads.append(t)

    def _serve(self, entry: Path) -> None:
        n = 0
        while not self._stop.is_set():
            fifo = entry / "outblob"
            with fifo.open("wb") as f:  # blocks until a reader opens outblob
                if self._stop.is_set():
                    return
                rd = (entry / "inblob").read_bytes()
                out, aux = self.respond(rd)
                self.requests.append(rd)
                if self.provider == "sev_guest":
                    tmp_aux = entry / f".auxblob.{n}"
                    tmp_aux.write_bytes(aux)
                    os.replace(tmp_aux, entry / "auxblob")
                gen = int((entry / "generation").read_text())
                (entry / "generation").write_text(f"{gen + 1}\n")
                f.write(out)
                # A fresh FIFO for the next round, swapped in before this reader sees EOF
                # (reopening the same FIFO could join the still-open previous reader).
                tmp = entry / f".outblob.{n}"
                os.mkfifo(tmp)
                os.replace(tmp, fifo)
                n += 1

    def close(self) -> None:
        """Stop serving: unblock each entry's thread waiting for a reader."""
        self._stop.set()
        for name in list(self._entries):
            with contextlib.suppress(OSError):
                fd = os.open(self.root / name / "outblob", os.O_RDONLY | os.O_NONBLOCK)
                os.close(fd)
        for t in self._threads:
            t.join(timeout=1)
