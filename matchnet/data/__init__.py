"""Datasets as one tensor each, and the class lists of their few-shot splits."""
from .fewshot import FewShotSplit
from .mnist import load_mnist
from .omniglot import DatasetNotFoundError, Omniglot, load_omniglot, omniglot_splits

__all__ = ["FewShotSplit", "DatasetNotFoundError", "Omniglot", "load_mnist", "load_omniglot", "load_splits",
           "omniglot_splits"]


def load_splits(dataset: str, split: str, root: str, download: bool = False) -> dict[str, FewShotSplit]:
    """The named dataset's splits (train / val / trainval / test) as FewShotSplits sharing one tensor."""
    if dataset == "omniglot":
        return omniglot_splits(load_omniglot(root, download=download), split)
    raise ValueError(f"unknown dataset {dataset!r}; choose 'omniglot'")
