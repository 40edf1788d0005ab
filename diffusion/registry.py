"""Named choices (schedules, samplers, targets, ...): one lookup, one error message."""
from typing import Collection, Mapping, TypeVar

T = TypeVar('T')


def check(name: str, valid: Collection[str], what: str) -> None:
  """Raise ValueError naming `what`, the bad name and every valid one (in their table order)."""
  if name not in valid:
    raise ValueError(f'Unknown {what} {name!r}; valid: {", ".join(valid)}.')


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
  """table[name]; an unknown name lists the table's names alphabetically."""
  check(name, sorted(table), what)
  return table[name]
