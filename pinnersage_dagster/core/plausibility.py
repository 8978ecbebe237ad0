"""Plausibility bounds: inputs that are valid row by row but implausible as a whole (a truncated
pins file, a day file that lost most of its rows, another day's file) are refused before they
replace anything. Each function returns the reason as a message with the figures, or None."""

from __future__ import annotations

from datetime import date
from statistics import median

# below this many actions on a typical day, daily counts are too noisy to judge a day by them
# (a small own log: a few rows a day, some days none)
DAY_VOLUME_FLOOR = 1_000


def catalog_change(
    previous: int | None, accepted: int, read: int, reasons: dict[str, int], max_shrink: float
) -> str | None:
    if accepted == 0:
        why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "no rows"
        return f"the new catalog would be empty: 0 valid pins of {read} rows read ({why})"
    if previous and accepted < (1 - max_shrink) * previous:
        return (
            f"the new catalog has {accepted} pins, {1 - accepted / previous:.0%} fewer than the current {previous} "
            f"(max_catalog_shrink {max_shrink:.0%})"
        )
    return None


def day_volume(day: date, actions: int, users: int, before: list[tuple[int, int]], min_share: float) -> str | None:
    """``before``: (actions, users) of the up to 7 days before ``day`` that have any. Judged only
    when the typical day has at least ``DAY_VOLUME_FLOOR`` actions."""
    if not before:
        return None
    typical_actions, typical_users = median(a for a, _ in before), median(u for _, u in before)
    if typical_actions < DAY_VOLUME_FLOOR:
        return None
    low = [
        f"{name} {value} < {min_share:.0%} of the median {typical:g} of the {len(before)} days before"
        for name, value, typical in (("actions", actions, typical_actions), ("users", users, typical_users))
        if value < min_share * typical
    ]
    return f"{day} has too few " + " and ".join(low) if low else None


def foreign_rows(day: date, outside: int, total: int, source: str) -> str | None:
    """A per-day file whose rows mostly belong to other days is the wrong file."""
    if total and outside > total / 2:
        return f"{source}: {outside} of its {total} rows have a ts outside {day}: it holds another day's actions"
    return None
