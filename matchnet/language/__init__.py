"""The one-shot language task of section 4.1.3 on the Penn Treebank: fill a blank by matching sentences.

vocab.py     PTB reading, the vocabulary, the paper's held-out words (appendix D, L_rand) and the word split
episodes.py  N-way k-shot episodes of blanked sentences, as matchnet.episodes.Episodes
encoder.py   sentence encoders f' = g' for matchnet.model.MatchingClassifier
train.py     episodic training and evaluation of the sentence Matching Network
oracle.py    the LSTM language-model oracle (Zaremba et al. 2014)
stats.py     test accuracy with bootstrap intervals over episodes and over the sample of test words

`python train/run.py table ptb` (train/table_ptb.py) runs the whole experiment.
"""
from .encoder import SentenceEncoder
from .episodes import SentencePool, build_pool, evaluation_episodes
from .oracle import LSTMLanguageModel, oracle_predictor
from .vocab import PTB, Vocabulary, held_out_words, load_ptb, parse_lrand, split_words

__all__ = ["LSTMLanguageModel", "PTB", "SentenceEncoder", "SentencePool", "Vocabulary", "build_pool",
           "evaluation_episodes", "held_out_words", "load_ptb", "oracle_predictor", "parse_lrand", "split_words"]
