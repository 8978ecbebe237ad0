"""Writes interactions.csv: a small interaction log in a team's own shape (user_id, item_id,
action, ts), with no item embeddings, for the README's walk-through. Deterministic.

300 users over 60 days (2026-06-01 .. 2026-07-30) act on 1,200 items; each user returns to two
or three of forty themes, items of a theme are acted on together, and popularity is skewed.
One item is acted on once (it cannot be embedded). Run: python data/examples/interactions/generate.py
"""

from pathlib import Path

import numpy as np
import pandas as pd

rng = np.random.default_rng(11)
themes, per_theme, users, days = 40, 30, 300, 60
start = pd.Timestamp("2026-06-01")
rows = []
popularity = 1.0 / np.arange(1, per_theme + 1) ** 0.7
popularity /= popularity.sum()
for user in range(1, users + 1):
    liked = rng.choice(themes, size=rng.integers(2, 4), replace=False)
    for _ in range(rng.integers(15, 45)):
        theme = rng.choice(liked)
        item = 1000 + theme * per_theme + rng.choice(per_theme, p=popularity)
        ts = start + pd.Timedelta(seconds=int(rng.integers(0, days * 86_400)))
        rows.append((user, item, "repin" if rng.random() < 0.3 else "click", ts.strftime("%Y-%m-%dT%H:%M:%SZ")))
rows.append((1, 9999, "click", "2026-06-15T12:00:00Z"))
frame = pd.DataFrame(rows, columns=["user_id", "item_id", "action", "ts"]).sort_values(["ts", "user_id"])
frame.to_csv(Path(__file__).with_name("interactions.csv"), index=False)
