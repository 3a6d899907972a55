"""Arrow tables to rows without silent coercion, and the strict text reading of a row's fields.

`str(value)` turned a binary `problem` into the text "b'...'" in every prompt and a list-valued
`answer` into "['3']" (so a correct \\boxed{3} scored 0). Here a text field must be a `str`
(an `int` id or answer is written out as its decimal digits, the one lossless case); anything
else is a bad row naming the column and its type. Invalid UTF-8 in a string column made
`Table.to_pylist()` raise a bare `UnicodeDecodeError` for the whole file; `table_to_rows` reads
such a column value by value and puts an `InvalidText` marker in the rows it cannot decode, so
the validator reports (or, with `on_bad_row=skip`, drops and counts) exactly those rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class InvalidText:
    """A string-column value whose bytes are not valid UTF-8."""

    raw: bytes

    def describe(self) -> str:
        try:
            self.raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return f"invalid UTF-8 (byte {self.raw[err.start]:#04x} at offset {err.start})"
        return "invalid UTF-8"


def _column_values(column: pa.ChunkedArray) -> list[Any]:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column.to_pylist()
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
        raw = pa.chunked_array([c.view(binary) for c in column.chunks], type=binary)
        out = []
        for value in raw.to_pylist():
            try:
                out.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(InvalidText(value))
        return out


def table_to_rows(table: pa.Table) -> list[dict[str, Any]]:
    """`table.to_pylist()`, except that undecodable strings become `InvalidText` markers."""
    try:
        return table.to_pylist()
    except UnicodeDecodeError:
        columns = {name: _column_values(table.column(name)) for name in table.column_names}
        return [
            {name: values[i] for name, values in columns.items()} for i in range(table.num_rows)
        ]


def text_field(row: dict[str, Any], name: str) -> tuple[str | None, str]:
    """(value, problem): the field as text, or None and why it is not text ("" if it is)."""
    value = row.get(name)
    if value is None or isinstance(value, str):
        return value, ""
    if isinstance(value, InvalidText):
        return None, f"`{name}` is {value.describe()}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), ""
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return None, f"`{name}` is a {type(value).__name__} ({shown}), not a string"
