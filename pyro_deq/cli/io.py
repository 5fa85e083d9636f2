"""Reading data matrices from files and writing output directories atomically.

Supported inputs, one row per observation and one column per feature:

- ``.csv`` (comma), ``.tsv`` / ``.tab`` (tab) and ``.txt`` (tab when the first
  line contains one, else comma), with an optional header line;
- ``.npy``, a 2-D numeric array;
- ``.npz``, a single 2-D array, or a sparse matrix saved with
  :func:`scipy.sparse.save_npz`;
- ``.mtx``, Matrix Market, read with :func:`scipy.io.mmread`.

Sparse inputs are converted to dense tensors, because the models work on
dense ``(N, d)`` matrices.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
import torch

from .._directories import apply_umask
from .._text import count_noun
from . import UserInputError

__all__ = ["MatrixFile", "OUTPUT_MARKER", "check_output_dir", "output_directory", "read_matrix", "staged_output"]

# Every output directory gets this empty file, and --force replaces only
# directories that have it, so it never deletes a directory of the user's own.
OUTPUT_MARKER = ".pyro-deq-output"

logger = logging.getLogger(__name__)

# Cell contents that mean "missing value" in text files, compared after
# stripping spaces and lowercasing.
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null"})

TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": None}
BINARY_SUFFIXES = (".npy", ".npz", ".mtx")

_COUNTING_NOTE = "(counted from 1)"


class MatrixFile(tuple):
    """The result of :func:`read_matrix`; unpacks as ``(y, mask, offset, column_names)``.

    :ivar torch.Tensor y: float32 data, shape ``(N, d)``, with 0 at missing entries.
    :ivar mask: bool tensor of shape ``(N, d)``, ``False`` at missing entries, or
        ``None`` when no entry is missing.
    :ivar offset: float32 tensor of shape ``(N,)`` read from the offset column, or ``None``.
    :ivar list column_names: the ``d`` feature names, from the header or
        ``column_1`` ... ``column_d`` (numbered as in the file).
    """

    def __new__(cls, y, mask, offset, column_names, locate):
        matrix = super().__new__(cls, (y, mask, offset, column_names))
        matrix._locate = locate
        return matrix

    y = property(lambda self: self[0])
    mask = property(lambda self: self[1])
    offset = property(lambda self: self[2])
    column_names = property(lambda self: self[3])

    def locate(self, row: int, column: int) -> str:
        """Describe entry ``(row, column)`` of ``y`` (counted from 0) as a position in the file.

        :returns: for example ``"line 5, column 3"`` for text files (lines
            and columns counted from 1, the header included) or
            ``"row 4, column 3"`` for binary files.
        """
        return self._locate(row, column)


def _input_error(path: Path, position: str | None, problem: str, fix: str) -> UserInputError:
    """Build the one-line error for a problem in ``path`` at ``position``."""
    where = f"{path}, {position} {_COUNTING_NOTE}" if position else str(path)
    return UserInputError(f"{where}: {problem}; {fix}")


def read_matrix(path, *, mask_missing: bool = False, offset_column: str | None = None) -> MatrixFile:
    """Read a data matrix from a text, NumPy or Matrix Market file.

    :param path: the file; its suffix selects the format (see the module docstring).
    :param bool mask_missing: accept missing values (empty cells, ``NA``,
        ``NaN``, ``N/A``, ``null``, or NaN in binary files) and return a mask
        that leaves them out of the likelihood; without it they are an error.
    :param str offset_column: a column to take out of the data and use as a
        per-row offset (for example log library size): a header name, or a
        column number counted from 1.
    :returns: a :class:`MatrixFile`, which unpacks as ``(y, mask, offset, column_names)``.
    :raises UserInputError: naming the file, the position (counted from 1) and
        the fix, for a missing or empty file, ragged rows, non-numeric cells,
        missing values without ``mask_missing``, or an unknown offset column.
    """
    path = Path(path)
    if not path.exists():
        raise _input_error(path, None, "file not found", "check the path and the current directory")
    if path.is_dir():
        raise _input_error(path, None, "is a directory, not a file", "pass the data file inside it")

    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _read_text(path, TEXT_SUFFIXES[suffix], mask_missing, offset_column)
    if suffix in BINARY_SUFFIXES:
        return _read_binary(path, suffix, mask_missing, offset_column)
    known = ", ".join(sorted(TEXT_SUFFIXES) + list(BINARY_SUFFIXES))
    raise _input_error(path, None, f"unknown file type {suffix or '(no suffix)'!r}", f"use one of {known}")


# ---------------------------------------------------------------- text files


def _read_lines(path: Path, delimiter: str | None) -> list[tuple[int, list[str]]]:
    """Split ``path`` into ``(line number, cells)`` pairs, skipping blank lines."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise _input_error(path, None, f"is not UTF-8 text ({error.reason} at byte {error.start})",
                           "save it as UTF-8 CSV, or as .npy for binary data") from None

    if delimiter is None:
        first_line = text.lstrip("\r\n").split("\n", 1)[0]
        delimiter = "\t" if "\t" in first_line else ","

    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    rows = []
    for cells in reader:
        if all(not cell.strip() for cell in cells):
            continue
        rows.append((reader.line_num, [cell.strip() for cell in cells]))
    return rows


def _parse_number(cell: str) -> float | None:
    """Return the cell as a float, NaN for a missing-value token, or ``None`` if it is not a number."""
    if cell.lower() in MISSING_TOKENS:
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return None


def _is_header(cells: list[str]) -> bool:
    """Treat the first row as a header when more than half of its non-missing cells are not numbers.

    A header may contain numeric names (such as years in a vocabulary), and a
    data row may contain a typo. The majority decides between the two.
    """
    present = [cell for cell in cells if cell.lower() not in MISSING_TOKENS]
    names = [cell for cell in present if _parse_number(cell) is None]
    return 2 * len(names) > len(present)


def _read_text(path: Path, delimiter, mask_missing: bool, offset_column) -> MatrixFile:
    rows = _read_lines(path, delimiter)
    if not rows:
        raise _input_error(path, None, "the file is empty",
                           "write one row per observation and one column per feature")

    header = rows[0][1] if _is_header(rows[0][1]) else None
    data_rows = rows[1:] if header is not None else rows
    if not data_rows:
        raise _input_error(path, None, "the file has a header line but no data rows",
                           "add one row per observation below the header")

    width = len(header) if header is not None else len(data_rows[0][1])
    first_line = rows[0][0]
    values = np.empty((len(data_rows), width), dtype=np.float64)
    for index, (line, cells) in enumerate(data_rows):
        _check_width(path, line, cells, width, first_line)
        for column, cell in enumerate(cells):
            number = _parse_number(cell)
            if number is None:
                raise _non_numeric_error(path, line, column, cell, header is None and index == 0)
            values[index, column] = number

    names = _text_column_names(header, width)
    line_numbers = [line for line, _ in data_rows]

    def locate(row, column):
        return f"line {line_numbers[row]}, column {column + 1}"

    return _finish(path, values, names, locate, mask_missing, offset_column, has_header=header is not None)


def _check_width(path: Path, line: int, cells: list[str], width: int, first_line: int) -> None:
    """Raise for a row with a different number of cells than the first row."""
    if len(cells) == width:
        return
    if len(cells) < width:
        problem = f"the row has {len(cells)} cells but line {first_line} has {width}, so column {len(cells) + 1} is absent"
    else:
        problem = f"the row has {len(cells)} cells but line {first_line} has {width}, so column {width + 1} is extra"
    fix = "give every row the same number of cells (leave a cell empty and pass --mask-missing for a missing value)"
    raise _input_error(path, f"line {line}, column {min(len(cells), width) + 1}", problem, fix)


def _non_numeric_error(path: Path, line: int, column: int, cell: str, could_be_header: bool) -> UserInputError:
    fix = "correct the cell, or leave it empty and pass --mask-missing to treat it as missing"
    if could_be_header:
        fix += "; a first line counts as a header when most of its cells are not numbers"
    return _input_error(path, f"line {line}, column {column + 1}", f"cannot read {cell!r} as a number", fix)


def _text_column_names(header: list[str] | None, width: int) -> list[str]:
    if header is None:
        return [f"column_{column + 1}" for column in range(width)]
    return [name or f"column_{column + 1}" for column, name in enumerate(header)]


# -------------------------------------------------------------- binary files


def _read_binary(path: Path, suffix: str, mask_missing: bool, offset_column) -> MatrixFile:
    if suffix == ".npy":
        array = _load_npy(path)
    elif suffix == ".npz":
        array = _load_npz(path)
    else:
        array = _load_mtx(path)

    values = _as_float_matrix(path, array)
    names = [f"column_{column + 1}" for column in range(values.shape[1])]

    def locate(row, column):
        return f"row {row + 1}, column {column + 1}"

    return _finish(path, values, names, locate, mask_missing, offset_column, has_header=False)


def _load_npy(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise _input_error(path, None, f"is not a readable .npy array ({error})",
                           "save a 2-D numeric array with numpy.save") from None


def _load_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if "format" in keys and "shape" in keys:
                return scipy.sparse.load_npz(path)
            if len(keys) != 1:
                raise _input_error(path, None, f"contains {len(keys)} arrays ({', '.join(keys) or 'none'})",
                                   "save a single array with numpy.savez, or a sparse matrix with "
                                   "scipy.sparse.save_npz")
            return archive[keys[0]]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise _input_error(path, None, f"is not a readable .npz archive ({error})",
                           "save it with numpy.savez or scipy.sparse.save_npz") from None


def _load_mtx(path: Path):
    try:
        return scipy.io.mmread(path)
    except (ValueError, OSError, EOFError, IndexError) as error:
        raise _input_error(path, None, f"is not a readable Matrix Market file ({error})",
                           "write it with scipy.io.mmwrite") from None


def _as_float_matrix(path: Path, array) -> np.ndarray:
    """Convert a dense or sparse 2-D numeric array to float64, raising for other shapes and types."""
    if scipy.sparse.issparse(array):
        array = array.toarray()
    array = np.asarray(array)
    if array.ndim != 2:
        raise _input_error(path, None, f"contains an array of shape {array.shape}, not a 2-D matrix",
                           "save one row per observation, for example array.reshape(n_rows, -1)")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise _input_error(path, None, f"contains an array of dtype {array.dtype}, not numbers",
                           "convert it with array.astype(float) before saving")
    if np.iscomplexobj(array):
        raise _input_error(path, None, "contains complex numbers", "save the real part, or the magnitude")
    if 0 in array.shape:
        raise _input_error(path, None, f"contains an empty array of shape {array.shape}",
                           "save at least one row and one column")
    return array.astype(np.float64)


# ----------------------------------------------------------- common checks


def _finish(path, values: np.ndarray, names, locate, mask_missing, offset_column, has_header) -> MatrixFile:
    """Split off the offset column, check missing values and convert to tensors."""
    offset = None
    if offset_column is not None:
        index = _offset_index(path, offset_column, names, has_header)
        offset = _offset_values(path, values[:, index], index, locate)
        values = np.delete(values, index, axis=1)
        names = names[:index] + names[index + 1:]
        if values.shape[1] == 0:
            raise _input_error(path, None, "no data columns are left after removing the offset column",
                               "add the feature columns, or drop --offset-column")
        locate = _skip_column(locate, index)

    missing = np.isnan(values)
    mask = None
    if missing.any():
        if not mask_missing:
            row, column = np.argwhere(missing)[0]
            raise _input_error(path, locate(row, column),
                               f"missing value ({int(missing.sum())} in the file)",
                               "pass --mask-missing to leave missing entries out of the likelihood, or fill them in")
        mask = torch.from_numpy(~missing)
        values = np.where(missing, 0.0, values)
        logger.info("%s: %d missing entries left out of the likelihood", path, int(missing.sum()))

    y = torch.from_numpy(values.astype(np.float32))
    return MatrixFile(y, mask, offset, names, locate)


def _skip_column(locate, removed: int):
    """Shift column positions of ``locate`` past the removed offset column."""

    def shifted(row, column):
        return locate(row, column + 1 if column >= removed else column)

    return shifted


def _offset_index(path: Path, offset_column: str, names: list[str], has_header: bool) -> int:
    """Find the offset column by header name, or by a number counted from 1."""
    if has_header and offset_column in names:
        return names.index(offset_column)
    if str(offset_column).isdigit() and 1 <= int(offset_column) <= len(names):
        return int(offset_column) - 1
    if has_header:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        fix = f"pass a name from the header ({shown}) or a column number from 1 to {len(names)}"
    else:
        fix = f"the file has no header, so pass a column number from 1 to {len(names)}"
    raise _input_error(path, None, f"offset column {offset_column!r} not found", f"with --offset-column {fix}")


def _offset_values(path: Path, column: np.ndarray, index: int, locate) -> torch.Tensor:
    bad = ~np.isfinite(column)
    if bad.any():
        row = int(np.argmax(bad))
        raise _input_error(path, locate(row, index), f"invalid offset {column[row]!r}",
                           "give every row a finite offset, for example the log of its library size")
    return torch.from_numpy(column.astype(np.float32))


# --------------------------------------------------------- output folders


def output_directory(text: str) -> Path:
    """Parse ``--out``, rejecting an empty name, which ``Path`` would read as the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory name, got an empty string")
    return Path(text)


def check_output_dir(out, force: bool, inputs: tuple = ()) -> Path:
    """Check that ``out`` can be created, before any computation starts.

    :param out: the output directory.
    :param bool force: allow replacing an existing directory that an earlier
        run wrote (it holds :data:`OUTPUT_MARKER`).
    :param inputs: paths of input files, which must not lie inside ``out``.
    :returns: ``out`` as a :class:`~pathlib.Path`.
    :raises UserInputError: if ``out`` is empty, is a file, exists (without
        ``force``), exists without the marker, contains an input, or its parent
        directory does not exist or is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: a file of that name exists; choose another --out")
    resolved = out.resolve()
    for path in inputs:
        if resolved in Path(path).resolve().parents:
            raise UserInputError(
                f"--out {out}: the input {path} is inside it and would be replaced; choose another --out"
            )
    if out.exists() and not force:
        raise UserInputError(
            f"--out {out}: the output directory already exists; pass --force to replace it, "
            "or choose another --out"
        )
    if out.exists() and not (out / OUTPUT_MARKER).is_file():
        entries = sorted(entry.name for entry in out.iterdir())
        listed = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        count = count_noun(len(entries), "entry", "entries")
        raise UserInputError(
            f"--out {out}: the directory was not written by pyro-deq (it has no {OUTPUT_MARKER} file) and "
            f"contains {count} ({listed or 'none'}); --force replaces only earlier pyro-deq output, "
            "so choose a new --out"
        )
    parent = resolved.parent
    if not parent.is_dir():
        raise UserInputError(f"--out {out}: the parent directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"--out {out}: the parent directory {parent} is not writable; choose another --out")
    return out


@contextlib.contextmanager
def staged_output(out, force: bool):
    """Yield a temporary directory next to ``out`` and move it to ``out`` when the block succeeds.

    Everything is written to the temporary directory first. If the block
    raises (an error, or ``KeyboardInterrupt``), the temporary directory is
    removed and ``out`` is left as it was. With ``force`` an existing ``out``
    is replaced only after the new output is complete.

    :param out: the final output directory; its parent must exist.
    :param bool force: replace an existing ``out``.
    :raises UserInputError: if ``out`` appeared meanwhile and ``force`` is false.
    """
    out = check_output_dir(out, force)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.resolve().parent))
    try:
        yield staging
        # The code that wrote into staging may have replaced it with its own
        # private temporary directory, so the permissions are set afterwards.
        apply_umask(staging)
        (staging / OUTPUT_MARKER).write_text("")
        _publish(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, out: Path, force: bool) -> None:
    """Move ``staging`` to ``out``, replacing an existing ``out`` only with ``force``."""
    check_output_dir(out, force)
    if not out.exists():
        os.replace(staging, out)
        return

    # os.replace cannot overwrite a non-empty directory, so the old one moves aside first.
    previous = staging.with_suffix(".previous")
    os.replace(out, previous)
    try:
        os.replace(staging, out)
    except OSError:
        os.replace(previous, out)
        raise
    shutil.rmtree(previous, ignore_errors=True)
