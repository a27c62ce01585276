"""The baselines of the paper's Table 1 (section 4.1), evaluated on the Matching Network's test episodes.

  pixels.py      cosine nearest neighbour on raw pixels
  classifier.py  the Conv-4 trained as an ordinary classifier; its features for nearest-neighbour matching
  siamese.py     Koch et al.'s convolutional siamese net on same/different pairs
  mann.py        Santoro et al.'s memory-augmented network (LSTM + least-recently-used-access memory)
  finetune.py    fine-tuning on the support set only, batched across episodes
  features.py    evaluation on features computed once per image (the same episodes as matchnet.evaluate)
  store.py       their checkpoints (encoders.py: the Conv-4 encoders alone); they train through matchnet.engine
                 and read configs with matchnet.config
"""
from .classifier import BaselineClassifier, ClassifierConfig, train_classifier
from ..config import config_from_dict, config_from_toml
from .features import (FeatureEpisodes, FeaturePredictor, as_predictor, class_features, evaluate_features,
                       evaluate_features_table, nearest_neighbour)
from .finetune import FinetuneConfig, finetune_episodes, finetune_predictor, select_on_validation, split_encoder
from .mann import MANN, MANNConfig, load_mann, lrua_step, mann_predictor, train_mann
from .pixels import pixel_features, pixels_predictor
from .siamese import SiameseConfig, SiameseNet, train_siamese
from .encoders import load_encoder

__all__ = [
    "BaselineClassifier", "ClassifierConfig", "FeatureEpisodes", "FeaturePredictor", "FinetuneConfig", "MANN",
    "MANNConfig", "SiameseConfig", "SiameseNet", "as_predictor", "class_features", "config_from_dict",
    "config_from_toml", "evaluate_features", "evaluate_features_table", "finetune_episodes", "finetune_predictor",
    "load_encoder", "load_mann", "lrua_step", "mann_predictor", "nearest_neighbour", "pixel_features",
    "pixels_predictor", "select_on_validation", "split_encoder", "train_classifier", "train_mann", "train_siamese",
]
