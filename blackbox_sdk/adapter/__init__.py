"""BBox-Adapter: the energy model that scores (question, answer) pairs, its NCE training offline
and in online rounds, and the sentence-level beam search. Importing this stays light: torch and
the encoder load when a model is built.
"""

from .._lazy import lazy_attributes
from ._beam import BeamResult, ClientSampler, SampleFn, ScoreFn, beam_search, client_sampler, render_chatml
from ._cli import cli_main
from ._config import DEFAULT_BASE, AdapterConfig
from ._consensus import normalize_answer
from ._curve import plot_curve
from ._feedback import groups_from_log, read_log
from ._folder import check_folder
from ._groups import RankingGroup, build_groups, line_prefixes, split_groups
from ._labelers import ai_judge, log_labels
from ._loss import batch_energy_loss, nce_loss
from ._model import Adapter
from ._offline import train_from_log
from ._online_config import OnlineConfig, OnlineQuestion, OnlineReport
from ._picks import calibrate_consensus
from ._recipes import RECIPES, Recipe, RecipeChoice, choose_recipe, online_train_auto
from ._rounds import online_train
from ._sampling import ClientAnswerSampler, Samples, client_answer_sampler
from ._trainer import RankingMetrics, TrainConfig, TrainResult, evaluate, train
from ._verdict import Verdict

__all__ = [
    "Adapter",
    "AdapterConfig",
    "BeamResult",
    "ClientAnswerSampler",
    "ClientSampler",
    "DEFAULT_BASE",
    "EnergyModel",
    "OnlineConfig",
    "OnlineQuestion",
    "OnlineReport",
    "RECIPES",
    "RankingGroup",
    "RankingMetrics",
    "Recipe",
    "RecipeChoice",
    "SampleFn",
    "Samples",
    "ScoreFn",
    "TrainConfig",
    "TrainResult",
    "Verdict",
    "ai_judge",
    "batch_energy_loss",
    "beam_search",
    "build_groups",
    "calibrate_consensus",
    "check_folder",
    "choose_recipe",
    "cli_main",
    "client_answer_sampler",
    "client_sampler",
    "evaluate",
    "groups_from_log",
    "line_prefixes",
    "log_labels",
    "nce_loss",
    "normalize_answer",
    "online_train",
    "online_train_auto",
    "plot_curve",
    "read_log",
    "render_chatml",
    "split_groups",
    "train",
    "train_from_log",
]

__getattr__ = lazy_attributes(__name__, {"EnergyModel": "._energy"})
