"""JSON Lines input: one record a line, decoded and checked a chunk at a time.

A chunk's lines are parsed into columns by Arrow's JSON reader with the types the contract
implies (it refuses a value of the wrong JSON type), then checked column by column like a
CSV chunk (nulls, ranges, categories). When Arrow refuses the chunk, each line is decoded
alone by msgspec types built from the contract (the checks the HTTP path applies), so the
bad lines become dead letters with their reason and the rest are scored. Fields the
contract does not name are ignored: a file usually carries ids, labels or timestamps
beside the model's inputs.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.json as pajson

from baton.batch import Batch
from baton.contract.spec import Contract
from baton.contract.validate import RecordsDecoder, as_text, shown, to_column, value_type
from baton.errors import BatonError, ContractViolation, RequestError
from baton.scoring.base import Chunk, DeadRow, ScoringError
from baton.scoring.readers import ARROW_TYPES, checked_chunk

_BLOCK = 8 << 20
_ID = "baton_id_"


class JsonlReader:
    def __init__(self, path: Path, contract: Contract, id_column: str | None,
                 chunk_rows: int) -> None:
        self.path = path
        self.total_bytes = path.stat().st_size
        self.chunk_rows = chunk_rows
        self.specs = list(contract.inputs)
        self.id_column = id_column
        names = [s.name for s in self.specs]
        attrs: list[Any] = [(f"f{i}", value_type(s), None) if s.nullable
                            else (f"f{i}", value_type(s)) for i, s in enumerate(self.specs)]
        rename = {f"f{i}": s.name for i, s in enumerate(self.specs)}
        self._id_slot = names.index(id_column) if id_column in names else None
        if id_column is not None and self._id_slot is None:
            attrs.append((_ID, Any, None))
            rename[_ID] = id_column
            self._id_slot = len(attrs) - 1
        record = msgspec.defstruct("Record", attrs, kw_only=True, rename=rename)
        self._one = msgspec.json.Decoder(record)
        self._explain = RecordsDecoder(contract.with_unknown_fields("ignore"))
        schema = pa.schema([(s.name, ARROW_TYPES[s.type]) for s in self.specs])
        self._arrow = pajson.ParseOptions(explicit_schema=schema,
                                          unexpected_field_behavior="ignore")
        self._arrow_read = pajson.ReadOptions(use_threads=False, block_size=64 << 20)
        self._ids = None
        if id_column is not None and id_column not in names:
            only_id = msgspec.defstruct("Id", [("v", Any, None)], kw_only=True,
                                        rename={"v": id_column})
            self._ids = msgspec.json.Decoder(list[only_id])  # type: ignore[valid-type]

    def chunks(self) -> Iterator[Chunk]:
        held: list[bytes] = []
        seq, row, pos = 0, 0, 0
        n = self.chunk_rows
        for lines, pos in self._blocks():
            held.extend(lines)
            start = 0
            while len(held) - start >= n:
                yield self.decode(seq, held[start:start + n], row, pos)
                seq, row, start = seq + 1, row + n, start + n
            del held[:start]
        if held:
            yield self.decode(seq, held, row, pos)

    def close(self) -> None:
        """Nothing to release: each pass opens and closes the file itself."""

    def _blocks(self) -> Iterator[tuple[list[bytes], int]]:
        """The non-blank lines of each block read, and the bytes read so far."""
        try:
            with open(self.path, "rb") as f:
                rest, pos = b"", 0
                while block := f.read(_BLOCK):
                    pos += len(block)
                    *complete, rest = (rest + block).split(b"\n")
                    yield [line for line in complete if line and not line.isspace()], pos
                if rest and not rest.isspace():
                    yield [rest], pos
        except OSError as exc:
            raise ScoringError(f"cannot read {self.path}: {exc}", code="INPUT_UNREADABLE",
                               details={"path": str(self.path)}) from None

    def decode(self, seq: int, lines: list[bytes], first_row: int, pos: int) -> Chunk:
        rows = np.arange(first_row, first_row + len(lines), dtype=np.int64)
        table = self._columns(lines)
        if table is None:
            return self._line_by_line(seq, lines, rows, pos)
        if self._ids is not None:
            records = self._ids.decode(b"[" + b",".join(lines) + b"]")
            keys = _id_array([r.v for r in records])  # type: ignore[attr-defined]
        elif self.id_column is not None:
            keys = table.column(self.id_column).chunk(0)
        else:
            keys = pa.array(rows)
        return checked_chunk(seq, self.specs, table, rows, keys, lines.__getitem__, [], pos)

    def _columns(self, lines: list[bytes]) -> pa.Table | None:
        """The chunk as typed columns, or None if a line is not a record of those types."""
        try:
            table = pajson.read_json(io.BytesIO(b"\n".join(lines)), self._arrow_read,
                                     self._arrow)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows != len(lines):  # a line held several records
            return None
        return table.combine_chunks()

    def _line_by_line(self, seq: int, lines: list[bytes], rows: np.ndarray, pos: int) -> Chunk:
        good, dead = self._one_by_one(lines, rows)
        gone = {d.row for d in dead}
        keep = [i for i, r in enumerate(rows.tolist()) if r not in gone]
        good_rows = rows[keep]
        good_lines = [lines[i] for i in keep]
        columns = list(zip(*map(msgspec.structs.astuple, good), strict=True)) if good else []
        batch = Batch({s.name: to_column(s, list(v)) for s, v in
                       zip(self.specs, columns[:len(self.specs)], strict=True)},
                      len(good)) if good else None
        ids = (_id_array(list(columns[self._id_slot])) if self._id_slot is not None and good
               else pa.array(good_rows))
        return Chunk(seq, len(lines), batch, ids, good_rows, good_lines.__getitem__, dead,
                     pos)

    def _one_by_one(self, lines: list[bytes], rows: np.ndarray) -> tuple[list[Any],
                                                                         list[DeadRow]]:
        good, dead = [], []
        for line, row in zip(lines, rows.tolist(), strict=True):
            try:
                good.append(self._one.decode(line))
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                dead.append(self._dead(line, row, exc))
        return good, dead

    def _dead(self, line: bytes, row: int, exc: Exception) -> DeadRow:
        stage = "contract" if isinstance(exc, msgspec.ValidationError) else "decode"
        err: BatonError = (RequestError(f"row {row}: not a JSON record: {exc}",
                                        code="INVALID_JSON") if stage == "decode"
                           else ContractViolation(f"input contract violated at row {row}: "
                                                  f"{shown(str(exc))}", violations=[]))
        if stage == "contract":
            try:
                self._explain.decode(b"[" + line + b"]")
            except ContractViolation as why:
                v = [{**x, "record": row} for x in why.violations]
                where = f", field {v[0]['field']!r}" if v and v[0].get("field") else ""
                err = ContractViolation(f"input contract violated at row {row}{where}: "
                                        f"expected {v[0]['expected']}, "
                                        f"got {as_text(v[0]['got'])}",
                                        violations=v)
            except BatonError:
                pass
        return DeadRow(row, self._key(line, row), stage, err, line)

    def _key(self, line: bytes, row: int) -> Any:
        if self.id_column is None:
            return row
        try:
            record = msgspec.json.decode(line)
        except msgspec.DecodeError:
            return None
        return record.get(self.id_column) if isinstance(record, dict) else None


def _id_array(values: list[Any]) -> pa.Array:
    """Ids as read; ids of mixed JSON types become text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array([None if v is None else v if isinstance(v, str)
                         else msgspec.json.encode(v).decode() for v in values], pa.string())
