"""Hugging Face Hub support: find a checkpoint folder by name, load it, publish it.

A matchnet checkpoint is the folder checkpoint.save_model writes (config.json + model.safetensors). On the Hub
it also carries README.md (the card, matchnet.card), results.json, training.json and training_log.jsonl.
HubMatchingNetwork is MatchingNetwork with huggingface_hub's PyTorchModelHubMixin (save_pretrained /
from_pretrained / push_to_hub), its hooks routed through checkpoint.py and this module; matchnet.load returns one.

Network use is bounded: one probe with a short timeout decides between downloading and the local cache, because
hf_hub_download alone retries a dead network for half a minute before it looks in the cache.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCard, PyTorchModelHubMixin, get_hf_file_metadata, get_token, hf_hub_download
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                    LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, validate_repo_id

from .atomic import atomic_path, write_text
from .card import CARD, CARD_DATA, PAPER_URL, model_card
from .checkpoint import (CONFIG, WEIGHTS, CheckpointError, check_config, load_model, model_kwargs, read_config,
                         read_json, save_model)
from .model import MatchingNetwork

SHIPPED = Path(__file__).resolve().parent.parent / "assets"  # the models that ship with a checkout
EXTRAS = ("results.json", "training.json", "training_log.jsonl")
PUBLISHED = (CONFIG, WEIGHTS, CARD, *EXTRAS)  # everything `publish` uploads, in listing order
HUB_PREFIX = "hf://"  # forces a name to be read as a Hub repo id
TIMEOUT_S = 5.0  # network probes: long enough for a slow link, short enough that offline is not a hang


class PublishError(RuntimeError):
    """Publishing cannot start or failed: no token, no network, a rejected token, a Hub refusal."""


class HubMatchingNetwork(MatchingNetwork, PyTorchModelHubMixin, paper_url=PAPER_URL, **CARD_DATA):
    """MatchingNetwork with save_pretrained / from_pretrained / push_to_hub (huggingface_hub's mixin).

    The same constructor and weights as MatchingNetwork (it is one: isinstance holds); the hooks below make the
    mixin write and read matchnet's checkpoint folder (checkpoint.py) and this project's model card (card.py).
    """

    def _save_pretrained(self, save_directory: Path) -> None:
        save_model(self, save_directory)  # config.json with matchnet_format, so the mixin writes no other

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        **model_kwargs: Any) -> "HubMatchingNetwork":
        """A Hub repo id, a local checkpoint folder or a shipped model's name (see resolve).

        map_location="cuda" puts the model on a device; the architecture always comes from config.json.
        """
        folder = resolve(pretrained_model_name_or_path, revision=revision, token=token, cache_dir=cache_dir,
                         local_files_only=local_files_only, force_download=force_download)
        return super().from_pretrained(folder, **model_kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str | torch.device = "cpu",
                         **kwargs: Any) -> "HubMatchingNetwork":
        return load_folder(model_id, map_location, kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The card (README.md) save_pretrained writes; pass results=/training= via model_card_kwargs."""
        return _AtomicCard(str(model_card(self, card_data=self._hub_mixin_info.model_card_data, **kwargs)))


class _AtomicCard(ModelCard):
    """A card whose save() (called by the mixin's save_pretrained) writes through matchnet.atomic."""

    def save(self, filepath: str | os.PathLike) -> None:
        write_text(filepath, str(self))


# -- loading ---------------------------------------------------------------------------------------------------

def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *, revision: str | None = None,
         token: str | None = None, cache_dir: str | os.PathLike | None = None,
         local_files_only: bool = False) -> HubMatchingNetwork:
    """A trained model in eval mode, from a Hub repo id ("user/name"), a local checkpoint folder, or the name of
    a shipped model ("omniglot-vinyals" is assets/omniglot-vinyals). Raises CheckpointError naming what is wrong.
    A MatchingNetwork that also has save_pretrained / push_to_hub (HubMatchingNetwork).
    """
    return HubMatchingNetwork.from_pretrained(name_or_path, revision=revision, token=token, cache_dir=cache_dir,
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


def load_folder(folder: str | os.PathLike, device: str | torch.device,
                overrides: dict[str, Any]) -> HubMatchingNetwork:
    """The mixin's _from_pretrained: load_model, refusing constructor arguments that contradict config.json."""
    hub_args = {"revision", "cache_dir", "force_download", "local_files_only", "token"}
    model = load_model(folder, device, cls=HubMatchingNetwork)
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


# -- publishing ------------------------------------------------------------------------------------------------

def stage(checkpoint: str | os.PathLike, out: str | os.PathLike, repo_id: str | None = None) -> list[Path]:
    """Write into `out` exactly what publish uploads: the model through save_pretrained (config, weights, card)
    plus the checkpoint's results.json, training.json and training_log.jsonl where present. Returns the files.

    `out` must be a new or empty folder outside the checkpoint: a dry run deletes and overwrites nothing. The
    files are written into a temporary folder beside it and moved in at the end, so a failure leaves no half."""
    checkpoint, out = Path(checkpoint), Path(out).expanduser()
    model = load_model(checkpoint, cls=HubMatchingNetwork)  # validates the checkpoint before anything is written
    results, training = read_json(checkpoint / "results.json"), read_json(checkpoint / "training.json")
    _check_outdir(checkpoint, out)
    extras = [f for f in EXTRAS if (checkpoint / f).is_file()]
    files = [CONFIG, WEIGHTS, CARD, *extras]
    folder = checkpoint.resolve()
    name = folder.parent.name if folder.name in ("best", "final") else folder.name  # runs/<name>/best
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # a temporary folder, renamed onto `out` (absent or emptied) when complete
        tmp.mkdir()
        try:
            model.save_pretrained(tmp, model_card_kwargs=dict(results=results, training=training,
                                                              repo_id=repo_id, name=name, files=files))
            for f in extras:
                shutil.copy2(checkpoint / f, tmp / f)
            if out.is_dir():
                out.rmdir()  # empty (checked above); fails, keeping both, if something appeared there meanwhile
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a folder: atomic_path itself removes only files
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
