"""Datasets as one tensor each, and the class lists of their few-shot splits.

  fewshot.py       FewShotSplit: one dataset tensor and the classes a split may use
  omniglot.py      Omniglot (download, read, the vinyals / lake / lake-alphabets splits); mnist.py: MNIST's test set
  lake_runs.py     Lake et al.'s 20 one-shot runs (all_runs.zip or its folder), read as Omniglot is
  miniimagenet.py  miniImageNet's two layouts; folder.py: any ROOT/<class>/*.jpg folder
  classes.py       classes of image files -> one grid of images -> splits with the training classes' mean/std
  image_cache.py   decode once (rank 0 under torchrun) into a memory-mapped .npy; decode.py: one image file
  files.py         which files are images, opened only if regular; options.py: the image datasets' data options
  cache.py         the safetensors cache keyed on the source files; synthetic.py: coloured test images

Nothing here imports the rest of matchnet but matchnet.atomic: data is the bottom of the flow.
"""
from typing import Any

from .fewshot import FewShotSplit
from .files import DatasetNotFoundError
from .mnist import load_mnist
from .omniglot import Omniglot, alphabet_splits, load_omniglot, omniglot_splits

__all__ = ["FewShotSplit", "DatasetNotFoundError", "DATASETS", "Omniglot", "alphabet_splits", "load_mnist",
           "load_omniglot", "load_splits", "omniglot_splits"]

DATASETS = ("omniglot", "miniimagenet", "folder")
OMNIGLOT_OPTIONS = {"image_size": int}


def load_splits(dataset: str, split: str, root: str, download: bool = False,
                **options: Any) -> dict[str, FewShotSplit]:
    """The named dataset's splits (train / val / trainval / test) as FewShotSplits sharing one tensor.

    omniglot:      split vinyals | lake; options: image_size (28)
    miniimagenet:  split ravi; layout (Ravi's images/ + CSVs, or {train,val,test}/<wnid>/) found by itself;
                   options: image_size (84), resize, per_class, seed, workers, cache, progress, csv_dir
    folder:        ROOT/<class>/*.jpg; split random (options proportions, seed) | lists (options
                   train_classes, val_classes, test_classes); plus the miniimagenet options but csv_dir
    Options come from a training config's [data_options]; an unknown one is a ValueError naming it.
    """
    if dataset == "omniglot":
        unknown = sorted(set(options) - set(OMNIGLOT_OPTIONS))
        if unknown:
            raise ValueError(f"unknown data option(s) {unknown} for dataset 'omniglot'; known: "
                             f"{sorted(OMNIGLOT_OPTIONS)}")
        for key, value in options.items():
            if not isinstance(value, OMNIGLOT_OPTIONS[key]) or isinstance(value, bool):
                raise ValueError(f"data option {key} should be {OMNIGLOT_OPTIONS[key].__name__}, got {value!r}")
        if split == "lake-alphabets":  # Lake's protocol with 5 background alphabets held out for validation
            return alphabet_splits(load_omniglot(root, download=download, **options))
        return omniglot_splits(load_omniglot(root, download=download, **options), split)
    if dataset == "miniimagenet":  # PIL decoding and multiprocessing: only imported when used
        from .miniimagenet import load_miniimagenet

        return load_miniimagenet(root, split, download, **options)
    if dataset == "folder":
        from .folder import load_image_folder

        return load_image_folder(root, split, download, **options)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
