"""A user's recommendations or interests from the newest snapshot, as the service answers them."""

from __future__ import annotations

import sys

import pandas as pd

from ..reporting import frame_markdown
from ..serving.app import build_service
from ..serving.settings import ServiceSettings
from ..settings import settings


def user_report(
    command: str,
    user_id: int,
    *,
    serving_root: str | None,
    seed: int | None = None,
    policy: str | None = None,
    limit: int = 20,
) -> str:
    service = build_service(ServiceSettings.of(settings(), serving_root=serving_root, policy=policy))
    service.manager.refresh()
    if service.manager.current is None:
        sys.exit(
            f"no loadable serving snapshot under {service.settings.serving_root}: run `make demo` "
            "(or materialize serving_snapshot)"
        )
    if command == "interests":
        result = service.interests(user_id)
        table = pd.DataFrame(result["interests"])
        head = f"interests of user {user_id} (snapshot {result['snapshot']['partition']})"
        return head + "\n" + (frame_markdown(table, max_rows=50) if len(table) else "(none: cold-start user)")
    result = service.recommend(user_id, seed=seed)
    sampled = ", ".join(f"{m['medoid_pin_id']} (cluster {m['cluster_id']})" for m in result["sampled"]) or "none"
    head = (
        f"{len(result['items'])} recommendations for user {user_id} from {result['source']} "
        f"(snapshot {result['snapshot']['partition']}); sampled medoids: {sampled}"
    )
    return head + "\n" + frame_markdown(pd.DataFrame(result["items"]), max_rows=limit)
