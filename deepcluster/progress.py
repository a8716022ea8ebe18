"""Progress bars: shown on an interactive terminal, silent in CI and in Prefect's logs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")


def progress_bar(
    items: Iterable[Item], desc: str, unit: str, show: bool | None = None, **options: object
) -> Iterable[Item]:
    """Wrap `items` in a tqdm bar. show: True/False to force; None shows it only on a terminal."""
    return tqdm(items, desc=desc, unit=unit, disable=None if show is None else not show, **options)
