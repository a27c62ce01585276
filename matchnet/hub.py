"""Hugging Face Hub support: find a checkpoint folder by name, write its model card, publish it.

A matchnet checkpoint is the folder checkpoint.save_model writes (config.json + model.safetensors). On the Hub
it also carries README.md (the card below), results.json, training.json and training_log.jsonl. The model class
gets save_pretrained / from_pretrained / push_to_hub from huggingface_hub's PyTorchModelHubMixin; its hooks
(model.py) call resolve, load_folder and model_card here.

Network use is bounded: one probe with a short timeout decides between downloading and the local cache, because
hf_hub_download alone retries a dead network for half a minute before it looks in the cache.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, get_hf_file_metadata, get_token, hf_hub_download
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                    LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
from huggingface_hub.repocard_data import EvalResult
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, validate_repo_id

from .checkpoint import (CONFIG, WEIGHTS, CheckpointError, check_config, load_model, model_kwargs, read_config,
                         read_json)
from .model import MatchingNetwork
from .results import KEYS, results_table

SHIPPED = Path(__file__).resolve().parent.parent / "assets"  # the models that ship with a checkout
CARD = "README.md"
EXTRAS = ("results.json", "training.json", "training_log.jsonl")
PUBLISHED = (CONFIG, WEIGHTS, CARD, *EXTRAS)  # everything `publish` uploads, in listing order
HUB_PREFIX = "hf://"  # forces a name to be read as a Hub repo id
TIMEOUT_S = 5.0  # network probes: long enough for a slow link, short enough that offline is not a hang
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


class PublishError(RuntimeError):
    """Publishing cannot start or failed: no token, no network, a rejected token, a Hub refusal."""


# -- loading ---------------------------------------------------------------------------------------------------

def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *, revision: str | None = None,
         token: str | None = None, cache_dir: str | os.PathLike | None = None,
         local_files_only: bool = False) -> MatchingNetwork:
    """A trained model in eval mode, from a Hub repo id ("user/name"), a local checkpoint folder, or the name of
    a shipped model ("omniglot-vinyals" is assets/omniglot-vinyals). Raises CheckpointError naming what is wrong.
    """
    return MatchingNetwork.from_pretrained(name_or_path, revision=revision, token=token, cache_dir=cache_dir,
                                           local_files_only=local_files_only, map_location=device)


def shipped_models() -> list[str]:
    return sorted(p.name for p in SHIPPED.glob("*") if (p / CONFIG).is_file()) if SHIPPED.is_dir() else []


def resolve(name_or_path: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None,
            cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
            force_download: bool = False) -> Path:
    """The local folder for a name: an existing folder, then a shipped model, then a Hub repo (downloaded or
    cached). Its config.json is checked here, so a broken one is reported as CheckpointError, not a JSON trace.
    """
    name = str(name_or_path)
    if name.startswith(HUB_PREFIX):  # hf://USER/NAME: a Hub repo even where a local folder USER/ exists
        repo_id = name[len(HUB_PREFIX):]
        if not _is_repo_id(repo_id):
            raise CheckpointError(f"{name}: not a Hugging Face Hub repo id (hf://USER/NAME)")
        folder = _download(repo_id, revision, token, cache_dir, local_files_only, force_download)
        return _checked(folder)
    path = Path(name).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise CheckpointError(f"{path}: a file, not a checkpoint folder ({CONFIG} + {WEIGHTS})")
    elif "/" not in name and (SHIPPED / name / CONFIG).is_file():
        folder = SHIPPED / name
    elif not _is_repo_id(name):
        shipped = ", ".join(shipped_models()) or "none in this install"
        raise CheckpointError(f"{name}: no such checkpoint folder, not a shipped model ({shipped}), "
                              "and not a Hugging Face Hub repo id (USER/NAME)")
    elif path.parent.is_dir():  # runs/nosuch: a mistyped local path, not a request to the Hub
        near = sorted(p.name for p in path.parent.iterdir() if p.is_dir())[:8]
        raise CheckpointError(f"{name}: no such checkpoint folder ({path.parent}/ holds "
                              f"{', '.join(near) or 'no folders'}); for the Hub repo of that name write "
                              f"{HUB_PREFIX}{name}")
    else:
        folder = _download(name, revision, token, cache_dir, local_files_only, force_download)
    return _checked(folder)


def _checked(folder: Path) -> Path:
    # config.json's keys and types before anything else reads it (the mixin, the model constructor)
    check_config(model_kwargs(read_config(folder), folder / CONFIG), folder / CONFIG)
    return folder


def load_folder(folder: str | os.PathLike, device: str | torch.device, overrides: dict[str, Any]) -> MatchingNetwork:
    """The mixin's _from_pretrained: load_model, refusing constructor arguments that contradict config.json."""
    hub_args = {"revision", "cache_dir", "force_download", "local_files_only", "token"}
    model = load_model(folder, device)
    clash = {k: v for k, v in overrides.items() if k not in hub_args and model.config.get(k, _MISSING) != v}
    if clash:
        raise CheckpointError(f"{Path(folder) / CONFIG}: from_pretrained got {clash}, which {CONFIG} does not say; "
                              "the architecture always comes from the checkpoint")
    return model


_MISSING = object()


def _is_repo_id(name: str) -> bool:
    if name.count("/") != 1 or name.startswith((".", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return flag.upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str | None:
    # Likewise read at call time, so HF_HOME / HF_HUB_CACHE set after import are honoured.
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _hub_error(where: str, filename: str, error: BaseException) -> CheckpointError:
    if isinstance(error, GatedRepoError):
        why = "is gated: accept its terms on huggingface.co and log in (`hf auth login`)"
    elif isinstance(error, RepositoryNotFoundError):
        why = ("no such model repository on the Hugging Face Hub (or it is private and no token with access "
               "was given: `hf auth login` or HF_TOKEN)")
    elif isinstance(error, RevisionNotFoundError):
        why = "no such revision (branch, tag or commit) on the Hub"
    elif isinstance(error, EntryNotFoundError):
        why = f"the repository has no {filename}, so it is not a matchnet checkpoint ({CONFIG} + {WEIGHTS})"
    else:
        why = f"the Hub refused {filename} ({_short(error)})"
    return CheckpointError(f"{where}: {why}")


def _download(repo_id: str, revision: str | None, token: str | bool | None, cache_dir: str | os.PathLike | None,
              local_files_only: bool, force_download: bool) -> Path:
    where = repo_id + (f"@{revision}" if revision else "")
    cache_dir = cache_dir or _cache_dir()
    offline = local_files_only or _offline()
    why_offline = "HF_HUB_OFFLINE is set" if _offline() else "local_files_only=True"
    if not offline:
        try:  # one HEAD, no retries: is the Hub there, does the repo exist, which commit is current?
            meta = get_hf_file_metadata(hf_hub_url(repo_id, CONFIG, revision=revision), token=token,
                                        timeout=TIMEOUT_S)
            revision = meta.commit_hash or revision  # both files from the same commit
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
            raise _hub_error(where, CONFIG, e) from None
        except Exception as e:  # any network trouble (the HTTP client differs across versions): use the cache
            offline, why_offline = True, f"the Hub could not be reached ({_short(e)})"
    files = []
    for filename in (CONFIG, WEIGHTS):
        try:
            files.append(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                                         local_files_only=offline, force_download=force_download and not offline,
                                         etag_timeout=TIMEOUT_S))
        except LocalEntryNotFoundError:
            from huggingface_hub import constants

            cache = cache_dir or constants.HF_HUB_CACHE
            raise CheckpointError(
                f"{where}: {filename} is not in the local Hugging Face cache ({cache}) and {why_offline}. "
                "Load it once with network access, or pass a local checkpoint folder.") from None
        except (HfHubHTTPError, EntryNotFoundError) as e:
            raise _hub_error(where, filename, e) from None
        if filename == CONFIG:  # a hostile or broken config.json fails before the weights are fetched
            _checked(Path(files[0]).parent)
    return Path(files[0]).parent


# -- the model card --------------------------------------------------------------------------------------------

def model_card(model: MatchingNetwork, *, results: dict | None = None, training: dict | None = None,
               repo_id: str | None = None, name: str | None = None, files: list[str] | None = None,
               **_: Any) -> ModelCard:
    """README.md for a checkpoint: metadata (with model-index from results.json), the results table, the training
    config and commands (training.json), usage and citation. Without results the card says so instead."""
    name = name or (repo_id.split("/")[-1] if repo_id else None) or "matchnet-model"
    dataset = (results or training or {}).get("dataset", "omniglot")
    data = ModelCardData(**model._hub_mixin_info.model_card_data.to_dict())
    data.datasets = [dataset]
    data.metrics = ["accuracy"]
    data.model_name = name
    if results:
        data.eval_results = _eval_results(results)
    body = [f"# {name}", "", _summary(model, results, training), "", _usage(repo_id or name, model), ""]
    body += _results_section(results) + _training_section(training, results) + _files_section(files)
    body += ["## Citation", "", "```bibtex", BIBTEX, "```", ""]
    return ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body))


# How a dataset is named in cards; "folder" is a user's own ROOT/<class>/*.jpg (matchnet.data.images).
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
        f'model = matchnet.load("{load_name}")  # or matchnet.MatchingNetwork.from_pretrained(...)',
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


# -- publishing ------------------------------------------------------------------------------------------------

def stage(checkpoint: str | os.PathLike, out: str | os.PathLike, repo_id: str | None = None) -> list[Path]:
    """Write into `out` exactly what publish uploads: the model through save_pretrained (config, weights, card)
    plus the checkpoint's results.json, training.json and training_log.jsonl where present. Returns the files.

    `out` must be a new or empty folder outside the checkpoint: a dry run deletes and overwrites nothing. The
    files are written into a temporary folder beside it and moved in at the end, so a failure leaves no half."""
    checkpoint, out = Path(checkpoint), Path(out).expanduser()
    model = load_model(checkpoint)  # validates the checkpoint before anything is written
    results, training = read_json(checkpoint / "results.json"), read_json(checkpoint / "training.json")
    _check_outdir(checkpoint, out)
    extras = [f for f in EXTRAS if (checkpoint / f).is_file()]
    files = [CONFIG, WEIGHTS, CARD, *extras]
    folder = checkpoint.resolve()
    name = folder.parent.name if folder.name in ("best", "final") else folder.name  # runs/<name>/best
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.staging"  # mkdir: the usual mode
    tmp.mkdir()
    try:
        model.save_pretrained(tmp, model_card_kwargs=dict(results=results, training=training, repo_id=repo_id,
                                                          name=name, files=files))
        for f in extras:
            shutil.copy2(checkpoint / f, tmp / f)
        if out.is_dir():
            out.rmdir()  # empty (checked above); fails, keeping both, if something appeared there meanwhile
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / f for f in files]


def _check_outdir(checkpoint: Path, out: Path) -> None:
    """A dry run's OUTDIR: new, or an empty folder, and neither the checkpoint nor inside it."""
    src, dst = checkpoint.resolve(), out.resolve()
    fix = "choose a new or empty folder, e.g. --dry-run /tmp/upload"
    if dst == src or src in dst.parents:
        where = "is the checkpoint folder" if dst == src else "is inside the checkpoint folder"
        raise CheckpointError(f"{out}: the dry-run OUTDIR {where} {checkpoint}; it would overwrite or add to the "
                              f"checkpoint's files: {fix}")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: a file, not a folder; the dry-run OUTDIR receives the files to upload: {fix}")
    if out.is_dir() and any(out.iterdir()):
        held = sorted(p.name for p in out.iterdir())
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise CheckpointError(f"{out}: not empty (holds {shown}); a dry run deletes and overwrites nothing: {fix}")


def check_repo_id(repo_id: str) -> None:
    if not _is_repo_id(repo_id):
        raise PublishError(f"--repo-id {repo_id!r}: expected USER/NAME (or ORG/NAME) of letters, digits, '-', '_', '.'")


def check_hub_access(token: str | None = None) -> str:
    """Fail fast, before any upload: offline mode, no token, no network, a rejected token. Returns the token."""
    from huggingface_hub import constants

    if _offline():
        raise PublishError("HF_HUB_OFFLINE is set: publishing needs the network (--dry-run OUTDIR works offline)")
    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write "
                           "access (--dry-run OUTDIR works without one)")
    url = f"{constants.ENDPOINT}/api/whoami-v2"
    try:
        response = get_session().get(url, headers=build_hf_headers(token=token), timeout=TIMEOUT_S)
    except Exception as e:  # connection refused, DNS, timeout: whatever the installed HTTP client raises
        raise PublishError(f"cannot reach {constants.ENDPOINT} within {TIMEOUT_S:g} s ({_short(e)})") from None
    try:
        hf_raise_for_status(response)
    except HfHubHTTPError as e:
        raise PublishError(f"{url} rejected the token ({_short(e)}); log in again with `hf auth login`") from None
    return token


def publish(checkpoint: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
            token: str | None = None) -> str:
    """Upload a checkpoint folder (see stage) to the Hub as one commit; returns the commit URL."""
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "upload"
        stage(checkpoint, staged, repo_id)  # a broken checkpoint is reported before the network is touched
        token = check_hub_access(token)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=staged, revision=revision,
                                       commit_message=f"Publish {Path(checkpoint).resolve().name} with matchnet")
        except HfHubHTTPError as e:
            raise PublishError(f"{repo_id}: the Hub refused the upload ({_short(e)})") from None
    return getattr(commit, "commit_url", None) or str(commit)
