"""The PinnerSage asset graph, one module per stage.

pins -> candidate_pool -> pin_index                      (catalog side)
pins -> raw_actions -> action_windows -> user_clusters -> user_medoids   (user side)
user_medoids + pin_index -> serving_snapshot                             (what is served)
"""

from .actions import action_windows, raw_actions
from .candidates import candidate_pool, pins
from .clusters import user_clusters
from .index import pin_index
from .medoids import user_medoids
from .serving import serving_snapshot
from .evaluation import offline_evaluation

all_assets = [
    pins, candidate_pool, pin_index, raw_actions, action_windows, user_clusters, user_medoids, serving_snapshot,
    offline_evaluation,
]
