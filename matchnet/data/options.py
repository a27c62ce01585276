"""The data options of the image datasets (a training config's [data_options]): names, types, defaults, checks."""
from __future__ import annotations

from typing import Any

# data options: name -> (type(s), default). Shared by both datasets; each dataset adds its own.
COMMON_OPTIONS: dict[str, tuple[tuple[type, ...], Any]] = {
    "image_size": ((int,), 84),  # side of the square images the model sees
    "resize": ((str,), "stretch"),  # stretch (as miniImageNet was made) | crop (shorter side, then centre crop)
    "per_class": ((int,), 0),  # images per class; 0 = the smallest class's count (classes with fewer are left out)
    "seed": ((int,), 0),  # which images a capped class keeps, and the "random" split of a folder
    "workers": ((int,), 0),  # decoding processes; 0 = one per CPU, 1 = in this process
    "cache": ((bool,), True),
    "progress": ((bool,), True),
}
MINI_OPTIONS = {**COMMON_OPTIONS, "csv_dir": ((str,), "")}
FOLDER_OPTIONS = {**COMMON_OPTIONS, "proportions": ((list,), [0.64, 0.16, 0.20]),
                  "train_classes": ((list, str), None), "val_classes": ((list, str), None),
                  "test_classes": ((list, str), None)}


def check_options(dataset: str, options: dict[str, Any], spec: dict[str, tuple[tuple[type, ...], Any]]) -> dict:
    """The options with defaults filled in; an unknown key or a wrong type is a ValueError naming it."""
    unknown = sorted(set(options) - set(spec))
    if unknown:
        raise ValueError(f"unknown data option(s) {unknown} for dataset {dataset!r}; known: {sorted(spec)}")
    out = {}
    for key, (types, default) in spec.items():
        value = options.get(key, default)
        if key in options and not (isinstance(value, types) and not (isinstance(value, bool) and bool not in types)):
            names = " or ".join(t.__name__ for t in types)
            raise ValueError(f"data option {key} should be {names}, got {value!r}")
        out[key] = value
    if out["image_size"] < 8:
        raise ValueError(f"data option image_size should be at least 8, got {out['image_size']}")
    if out["resize"] not in ("stretch", "crop"):
        raise ValueError(f"data option resize should be 'stretch' or 'crop', got {out['resize']!r}")
    if out["per_class"] < 0 or out["workers"] < 0:
        raise ValueError("data options per_class and workers cannot be negative")
    return out
