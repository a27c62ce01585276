"""matchnet: Matching Networks for One Shot Learning (Vinyals et al., 2016) in plain PyTorch."""
from .checkpoint import CheckpointError, load_model, save_model
from .episodes import EpisodeSampler, Episodes, evaluation_episodes
from .evaluate import Accuracy, evaluate, evaluate_table
from .hub import HubMatchingNetwork, load
from .model import MatchingNetwork, SupportSet
from .predict import Predictions, Predictor, predict

__all__ = [
    "Accuracy", "CheckpointError", "EpisodeSampler", "Episodes", "HubMatchingNetwork", "MatchingNetwork",
    "Predictions", "Predictor", "SupportSet", "evaluate", "evaluate_table", "evaluation_episodes", "load",
    "load_model", "predict", "save_model",
]
__version__ = "0.1.0"
