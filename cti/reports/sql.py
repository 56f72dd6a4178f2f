"""Two SQL expressions that differ by dialect, so every report has one code path.

``Epoch(x)``: seconds since 1970 as a float. SQLite stores our UtcDateTime as
naive UTC text: whole seconds from ``strftime('%s')`` plus the milliseconds of
``strftime('%f')`` (``julianday`` arithmetic loses about 10 µs, which shows in
15-minute buckets and exact durations); PostgreSQL has ``EXTRACT(EPOCH)``.
``Floor(x)``: the largest integer not above x (SQLite has no FLOOR before 3.35
and CAST truncates towards zero, which differs for negative values).
``Bucket(x, n)``: floor(epoch(x) / n) for a time after 1970 and a whole number
of seconds n, from the whole seconds alone (exact: n divides whole seconds),
one ``strftime`` on SQLite instead of the four of ``Floor(Epoch(x) / n)``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, Integer, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.functions import FunctionElement


class Epoch(FunctionElement[float]):
    type = Float()
    inherit_cache = True
    name = "epoch"


class Floor(FunctionElement[int]):
    type = Integer()
    inherit_cache = True
    name = "floor_int"


class Bucket(FunctionElement[int]):
    type = Integer()
    inherit_cache = True
    name = "time_bucket"


@compiles(Epoch, "sqlite")
def _epoch_sqlite(element: Epoch, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"(CAST(strftime('%s', {arg}) AS REAL) + CAST(substr(strftime('%f', {arg}), 3) AS REAL))"


@compiles(Epoch, "postgresql")
def _epoch_pg(element: Epoch, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"CAST(EXTRACT(EPOCH FROM {arg}) AS DOUBLE PRECISION)"


@compiles(Floor, "sqlite")
def _floor_sqlite(element: Floor, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"(CAST({arg} AS INTEGER) - (CAST({arg} AS INTEGER) > ({arg})))"


@compiles(Floor, "postgresql")
def _floor_pg(element: Floor, compiler: SQLCompiler, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    return f"CAST(FLOOR({arg}) AS BIGINT)"


@compiles(Bucket, "sqlite")
def _bucket_sqlite(element: Bucket, compiler: SQLCompiler, **kw: Any) -> str:
    arg, size = (compiler.process(c, **kw) for c in element.clauses)
    return f"(CAST(strftime('%s', {arg}) AS INTEGER) / {size})"


@compiles(Bucket, "postgresql")
def _bucket_pg(element: Bucket, compiler: SQLCompiler, **kw: Any) -> str:
    arg, size = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {arg}) / {size}) AS BIGINT)"


def epoch(column: ColumnElement[Any]) -> ColumnElement[float]:
    return Epoch(column)


def floor_int(value: ColumnElement[Any]) -> ColumnElement[int]:
    return Floor(value)


def bucket(column: ColumnElement[Any], seconds: int) -> ColumnElement[int]:
    return Bucket(column, literal_column(str(int(seconds))))
