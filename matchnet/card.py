"""The model card (README.md) of a matchnet checkpoint: Hub metadata with a model-index from results.json, the
results table beside the paper's, the training setup (training.json), usage and citation.

Pure text from a model and two JSON records: nothing here touches the network or the disk.
"""
from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult

from .checkpoint import CONFIG, WEIGHTS
from .model import MatchingNetwork
from .results import KEYS, results_table

CARD = "README.md"
# The card's metadata; HubMatchingNetwork (hub.py) declares the same to the mixin, which adds its own tags.
CARD_DATA = dict(library_name="matchnet", license="mit",
                 tags=["few-shot-learning", "one-shot-learning", "matching-networks", "omniglot"])

PAPER_URL = "https://arxiv.org/abs/1606.04080"
BIBTEX = """@inproceedings{vinyals2016matching,
  title     = {Matching Networks for One Shot Learning},
  author    = {Vinyals, Oriol and Blundell, Charles and Lillicrap, Timothy and Kavukcuoglu, Koray and Wierstra, Daan},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {29},
  pages     = {3630--3638},
  year      = {2016}
}"""
COLUMN_NAMES = {"5w1s": "5-way 1-shot", "5w5s": "5-way 5-shot", "20w1s": "20-way 1-shot", "20w5s": "20-way 5-shot"}


def model_card(model: MatchingNetwork, *, results: dict | None = None, training: dict | None = None,
               repo_id: str | None = None, name: str | None = None, files: list[str] | None = None,
               card_data: ModelCardData | None = None, **_: object) -> ModelCard:
    """README.md for a checkpoint: metadata (with model-index from results.json), the results table, the training
    config and commands (training.json), usage and citation. Without results the card says so instead.
    card_data: the metadata to start from (the mixin's, with its tags), else CARD_DATA."""
    name = name or (repo_id.split("/")[-1] if repo_id else None) or "matchnet-model"
    dataset = (results or training or {}).get("dataset", "omniglot")
    data = ModelCardData(**(card_data.to_dict() if card_data is not None else CARD_DATA))
    data.datasets = [dataset]
    data.metrics = ["accuracy"]
    data.model_name = name
    if results:
        data.eval_results = _eval_results(results)
    body = [f"# {name}", "", _summary(model, results, training), "", _usage(repo_id or name, model), ""]
    body += _results_section(results) + _training_section(training, results) + _files_section(files)
    body += ["## Citation", "", "```bibtex", BIBTEX, "```", ""]
    return ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body))


# How a dataset is named in cards; "folder" is a user's own ROOT/<class>/*.jpg (matchnet.data.folder).
DATASET_NAMES = {"omniglot": "Omniglot", "miniimagenet": "miniImageNet", "folder": "an image folder"}
DATA_FOLDERS = {"omniglot": "Omniglot in `data/omniglot-py/`", "miniimagenet": "miniImageNet in `data/miniimagenet/`"}


def _eval_results(results: dict) -> list[EvalResult]:
    split, dataset = results.get("split", ""), results.get("dataset", "omniglot")
    out = []
    for key in (k for k in KEYS if k in results["accuracy"]):
        acc, column = results["accuracy"][key], COLUMN_NAMES[key]
        # One model-index entry per column: the mixin groups metrics by task type and dataset config.
        common = dict(task_type="few-shot-image-classification", task_name=f"{column} classification",
                      dataset_type=dataset,
                      dataset_name=f"{DATASET_NAMES.get(dataset, dataset)} ({split} split), {column}",
                      dataset_config=f"{split}, {column}", dataset_split="test")
        out.append(EvalResult(**common, metric_type="accuracy", metric_value=round(acc["mean"], 2),
                              metric_name="accuracy (%)"))
        out.append(EvalResult(**common, metric_type="accuracy_ci95", metric_value=round(acc["ci95"], 2),
                              metric_name="95% confidence interval half-width (± %)"))
    return out


def _summary(model: MatchingNetwork, results: dict | None, training: dict | None) -> str:
    c = model.config
    side = c["image_size"] // 2 ** c["layers"]
    scale = (f"learned, now {float(model.scale.detach()):.3g}" if c["learn_scale"] else "fixed")
    fce = (f"Full Context Embeddings (a bidirectional LSTM over the support set and an attention LSTM with "
           f"{c['fce_steps']} read steps over the queries)" if c["fce"] else "no Full Context Embeddings")
    params = sum(p.numel() for p in model.parameters())
    info = results or training or {}
    dataset = info.get("dataset")
    data = (f" Trained on {DATASET_NAMES.get(dataset, dataset)}, `{info['split']}` class split." if dataset
            and "split" in info else "")
    if c.get("mean"):  # natural images: normalised inside the model with the training classes' statistics
        data += (f" Inputs are normalised inside the model per channel (mean {c['mean']}, std {c['std']}, the "
                 "training classes' statistics).")
    return (f"A [Matching Network]({PAPER_URL}) (Vinyals et al., NeurIPS 2016) for one-shot image classification, "
            f"trained with matchnet, a plain PyTorch implementation.{data}\n\n"
            f"- Embedding: Conv-{c['layers']} ({c['layers']} × [3×3 conv, {c['hidden']} channels, BatchNorm, ReLU, "
            f"2×2 max-pool]), {c['in_channels']}×{c['image_size']}×{c['image_size']} input → "
            f"{c['hidden'] * side * side}-d\n"
            f"- Classifier: softmax attention over the support set on cosine similarity × {c['scale']:g} "
            f"({scale}); {fce}\n"
            f"- {params:,} parameters; weights in safetensors, constructor arguments in config.json")


def _usage(load_name: str, model: MatchingNetwork | None = None) -> str:
    c = model.config if model is not None else {"in_channels": 1, "image_size": 28}
    side = c["image_size"]
    what = "ink = 1" if c["in_channels"] == 1 else "RGB, not normalised (the model normalises)"
    return "\n".join([
        "## Usage", "",
        "```python",
        "import matchnet",
        "",
        f'model = matchnet.load("{load_name}")  # or matchnet.HubMatchingNetwork.from_pretrained(...)',
        f"# images: float [episodes, n, {c['in_channels']}, {side}, {side}] in [0, 1], {what}; "
        "labels: int64 [episodes, n] in [0, N)",
        "support = model.embed_support(support_images, support_labels)",
        "log_probs, attention = model.classify(support, query_images)  # [E, Q, N], [E, Q, S]",
        "```",
    ])


def _results_section(results: dict | None) -> list[str]:
    if not results:
        return ["## Results", "", "No evaluation results came with this checkpoint: run "
                "`python train/run.py eval --checkpoint DIR` and publish with `python train/run.py publish`.", ""]
    protocol = (f"{results['episodes']} test episodes per column (seed {results['seed']}), "
                f"{results['query_per_class']} queries per class, {results['test_classes']} test classes of the "
                f"`{results['split']}` split; evaluated on {results['hardware']}.")
    if results.get("dataset", "omniglot") != "omniglot":  # results_table's quoted rows are Omniglot's
        keys = [k for k in KEYS if k in results["accuracy"]]
        table = "\n".join([f"| model | split | FCE | {' | '.join(COLUMN_NAMES[k] for k in keys)} |",
                           "|---|---|---|" + "---:|" * len(keys),
                           f"| {Path(results['checkpoint']).name} | {results['split']} | "
                           f"{'yes' if results['model']['fce'] else 'no'} | "
                           + " | ".join(f"{results['accuracy'][k]['mean']:.2f} ± {results['accuracy'][k]['ci95']:.2f}"
                                        for k in keys) + " |"])
        return ["## Results", "", "Accuracy (%) ± the half-width of the 95% confidence interval over test "
                f"episodes, on {DATASET_NAMES.get(results['dataset'], results['dataset'])}.", "", table, "",
                protocol, ""]
    return ["## Results", "",
            "Accuracy (%) ± the half-width of the 95% confidence interval over test episodes. Rows in *italics* "
            "are quoted from papers, not measured here.", "",
            results_table([results]), "", protocol, ""]


def _training_section(training: dict | None, results: dict | None) -> list[str]:
    commands = [c["command"] for c in (training, results) if c and c.get("command")]
    dataset = (results or training or {}).get("dataset", "omniglot")
    where = DATA_FOLDERS.get(dataset, "the training data under `data/`")
    out = []
    if training:
        t = training.get("train_config", {})
        lines = []
        if t:
            lines += [f"- Episodes: {t['way']}-way {t['shot']}-shot, {t['query']} queries per class, "
                      f"{t['meta_batch']} episodes per step, {t['steps']} steps (classes: `{t['train_on']}`)",
                      f"- Optimizer: Adam, learning rate {t['lr']:g}, {t['schedule']} schedule, "
                      f"{t['warmup_steps']} warm-up steps, weight decay {t['weight_decay']:g}"]
        if training.get("selected"):
            lines.append(f"- Model selection: {training['selected']}")
        if training.get("trained_on"):
            took = f", {training['train_seconds']:.0f} s" if "train_seconds" in training else ""
            lines.append(f"- Hardware: {training['trained_on']}{took}")
        out += ["## Training", "", *lines, "", "<details><summary>Full training config (training.json)</summary>",
                "", "```json", json.dumps(training, indent=2), "```", "", "</details>", ""]
    if commands:
        out += ["## Reproduce", "", f"From a matchnet checkout with {where}:", "",
                "```bash", *commands, "```", "",
                "`python train/run.py rebuild --device cuda` retrains and re-evaluates every shipped model.", ""]
    return out


def _files_section(files: list[str] | None) -> list[str]:
    what = {CONFIG: "constructor arguments and `matchnet_format` (the checkpoint format version)",
            WEIGHTS: "the weights (safetensors: loading never unpickles)", CARD: "this card",
            "results.json": "test accuracies with their 95% CIs and the evaluation protocol",
            "training.json": "how the model was trained", "training_log.jsonl": "loss, accuracy and validation "
            "accuracy during training, one JSON object per line"}
    if not files:
        return []
    return ["## Files", "", *[f"- `{f}`: {what.get(f, '')}".rstrip(": ") for f in files], ""]
