"""The PinnerSage asset graph, one module per stage.

raw_actions -> pin_embeddings (only when the source gives no embeddings) -> pins   (the catalog)
pins -> candidate_pool -> pin_index                                              (catalog side)
raw_actions + pins -> action_windows -> user_clusters + user_medoids   (user side, one pass)
user_medoids + pin_index -> serving_snapshot                             (what is served)
serving_snapshot -> experiment_report      (what the served arms did: the service's impressions)
"""

from .actions import action_windows, raw_actions
from .candidates import candidate_pool, pins
from .embeddings import pin_embeddings
from .evaluation import offline_evaluation
from .experiment import experiment_report
from .index import pin_index
from .interests import user_interests
from .snapshot import serving_snapshot

all_assets = [
    pins,
    candidate_pool,
    pin_index,
    raw_actions,
    pin_embeddings,
    action_windows,
    user_interests,
    serving_snapshot,
    offline_evaluation,
    experiment_report,
]
