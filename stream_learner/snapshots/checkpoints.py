"""A model's committed snapshots in a local folder (``snapshot.checkpoint_dir``), one file each.

The file format: the snapshot's Avro envelopes (the messages it has on the topic), each preceded by
its length as 4 bytes big-endian, in a file named ``v<version>.snapshot``. Files are written
atomically after the commit; a full snapshot removes the files before it.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from stream_learner.errors import SnapshotError
from stream_learner.snapshots.chain import continuing
from stream_learner.snapshots.format import Assembler, Chunk, Snapshot, SnapshotMeta, decode_chunk

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")


class Checkpoints:
    """The checkpoint files of one model, under ``<folder>/<model name>/``."""

    def __init__(self, folder: Path, model_name: str, verify: Callable[[Chunk], None] | None = None) -> None:
        self.dir = Path(folder) / model_name
        self.verify = verify  # the signature check every file read passes

    def _files(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(p.stem[1:], p) for p in self.dir.glob("v*.snapshot")]
        return sorted((int(v), p) for v, p in found if v.isdigit())

    def write(self, meta: SnapshotMeta, messages: Iterable[bytes]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"v{meta.version:012d}.snapshot"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for message in messages:
                f.write(_LENGTH.pack(len(message)))
                f.write(message)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if meta.kind == "FULL":
            for version, old in self._files():
                if version < meta.version:
                    old.unlink(missing_ok=True)

    @staticmethod
    def read(path: Path, verify: Callable[[Chunk], None] | None = None) -> Snapshot:
        """The snapshot in one file; `SnapshotError` when it is not one complete, verified snapshot."""
        data = path.read_bytes()
        assembler = Assembler(verify=verify)
        pos, snapshot = 0, None
        while pos < len(data):
            if snapshot is not None or pos + _LENGTH.size > len(data):
                raise SnapshotError("truncated", f"{path}: stray bytes after the snapshot")
            (length,) = _LENGTH.unpack_from(data, pos)
            pos += _LENGTH.size
            if pos + length > len(data):
                raise SnapshotError("truncated", f"{path}: a message runs past the end of the file")
            snapshot = assembler.add(decode_chunk(data[pos : pos + length]))
            pos += length
        if snapshot is None:
            raise SnapshotError("truncated", f"{path}: the snapshot is incomplete")
        return snapshot

    def chains(self, on_refused: Callable[[SnapshotError], None] | None = None) -> Iterator[list[Snapshot]]:
        """Full snapshots with the deltas that continue them, newest first; files that do not verify
        are logged, told to ``on_refused`` and skipped."""
        snaps: list[Snapshot] = []
        for _, path in self._files():
            try:
                snaps.append(self.read(path, self.verify))
            except SnapshotError as err:
                log.warning("refused checkpoint %s: %s", path, err)
                if on_refused is not None:
                    on_refused(err)
        for i in reversed(range(len(snaps))):
            if snaps[i].meta.kind == "FULL":
                yield continuing(snaps[i], snaps[i + 1 :])
