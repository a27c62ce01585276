"""Within-alphabet one-shot (Lake, Salakhutdinov & Tenenbaum 2015): episodes whose N classes all come from one
alphabet, the support drawn by one drawer and the queries by another; and a training sampler that mixes such
hard-negative episodes with ordinary ones.

Drawers: the loader (matchnet.data.omniglot) sorts each character's 20 drawings by the drawer number DD of
its file name IIII_DD.png, and every Omniglot character has exactly drawers 01..20 (`drawers_in_zip` checks
the zips; tests/test_alphabets.py runs it on the real data), so drawing index j of any split is drawer j + 1.
Alphabets: a class is named "Alphabet/characterNN/rotDDD". For training, a class's group is its alphabet
*and* rotation: a rotated alphabet is a new alphabet of new classes, as the rotated characters are new classes.
Evaluation uses upright characters only, as Lake's test does.
Lake et al.'s 20 published runs themselves (matchnet.data.lake_runs) are scored by evaluate_lake_runs, as
their demo_classification.py scores: percent correct over every test item.
"""
from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .data.fewshot import FewShotSplit
from .data.lake_runs import LakeRuns
# alphabet_splits is the data's (a split of classes); re-exported here beside the episodes drawn from it
from .data.omniglot import LAKE_WAY, alphabet, alphabet_splits  # noqa: F401
from .episodes import EpisodeIndices, Episodes, gather, shuffle_support
from .evaluate import Accuracy, Predictor, accuracy, model_predictor

_DRAWER = re.compile(r"(images_background|images_evaluation)/([^/]+)/(character\d+)/\d+_(\d+)\.png$")


def class_groups(split: FewShotSplit) -> tuple[torch.Tensor, list[str]]:
    """Group id per class (long [C], on the CPU) and the group names "Alphabet/rotDDD", in first-seen order."""
    keys = [f"{alphabet(n)}/rot{90 * int(r):03d}" for n, r in zip(split.names, split.rotation.tolist())]
    names = list(dict.fromkeys(keys))
    index = {k: i for i, k in enumerate(names)}
    return torch.tensor([index[k] for k in keys], dtype=torch.long), names


def upright(split: FewShotSplit, alphabets: set[str] | None = None) -> FewShotSplit:
    """The split's rotation-0 classes (only those of `alphabets` if given), sorted by name, with an images
    tensor holding just their characters. Sorting makes the episodes of a seed depend only on which characters
    are in the split, not on the split file's order, so models tested on different splits that share characters
    see the same episodes; the compact tensor keeps the demo's preprocessing (per image) cheap."""
    keep = sorted((n, int(s)) for n, s, r in zip(split.names, split.source.tolist(), split.rotation.tolist())
                  if r == 0 and (alphabets is None or alphabet(n) in alphabets))
    if not keep:
        raise ValueError("no upright classes left in the split" + (f" for alphabets {sorted(alphabets)}"
                                                                    if alphabets else ""))
    sources = torch.tensor([s for _, s in keep], device=split.images.device)
    n = len(keep)
    return replace(split, images=split.images[sources], source=torch.arange(n, device=split.source.device),
                   rotation=torch.zeros(n, dtype=torch.long, device=split.source.device),
                   names=[name for name, _ in keep])


def eligible_alphabets(split: FewShotSplit, way: int) -> tuple[list[str], dict[str, int]]:
    """Groups with at least `way` classes (usable for within-alphabet episodes), and the skipped ones with
    their sizes."""
    groups, names = class_groups(split)
    sizes = torch.bincount(groups, minlength=len(names)).tolist()
    return ([g for g, s in zip(names, sizes) if s >= way], {g: s for g, s in zip(names, sizes) if s < way})


def within_alphabet_indices(groups: torch.Tensor, per_class: int, episodes: int, way: int, shot: int,
                            query: int, generator: torch.Generator) -> EpisodeIndices:
    """Lake's episodes: an alphabet drawn uniformly among those with >= `way` classes, `way` of its classes,
    and shot + query distinct drawers shared by every class: support = the first `shot` drawers' drawings,
    queries = the next `query` drawers' (so with 1 shot and 1 query: support by drawer a, queries by drawer b).
    Fixed draws per call: the same seed gives the same episodes on any device."""
    if shot + query > per_class:
        raise ValueError(f"{shot} shots + {query} queries exceed the {per_class} drawers per character")
    device = generator.device
    groups = groups.to(device)
    sizes = torch.bincount(groups)
    eligible = (sizes >= way).nonzero().flatten()
    if len(eligible) == 0:
        raise ValueError(f"{way}-way within-alphabet episodes need an alphabet with {way} classes; the largest "
                         f"here has {int(sizes.max())}")
    pick = eligible[torch.randint(len(eligible), (episodes,), generator=generator, device=device)]  # [E]
    # uniform noise, pushed above every in-alphabet key for the other alphabets' classes: argsort = a uniform
    # random order of the chosen alphabet's classes first
    noise = torch.rand(episodes, len(groups), generator=generator, device=device)
    keys = noise + 2.0 * (groups.unsqueeze(0) != pick.unsqueeze(1))
    classes = keys.argsort(dim=1)[:, :way]
    drawers = torch.rand(episodes, 1, per_class, generator=generator, device=device).argsort(dim=2)
    return EpisodeIndices(classes, drawers[..., :shot + query].expand(episodes, way, shot + query))


def within_alphabet_episodes(split: FewShotSplit, way: int, shot: int, query: int, episodes: int, seed: int,
                             batch: int = 100):
    """The same within-alphabet episodes for a seed on any device (indices drawn on the CPU), `batch` at a
    time; groups are alphabet + rotation, so pass `upright(split)` for Lake's test."""
    groups, _ = class_groups(split)
    # draw among the eligible alphabets' classes only: a split that also holds a few characters of some other
    # alphabet (Gurmukhi in the vinyals test split) gives the same episodes as one without them
    keep = (torch.bincount(groups)[groups] >= way).nonzero().flatten()
    if len(keep) == 0:
        raise ValueError(f"{way}-way within-alphabet episodes need an alphabet with {way} classes; the largest "
                         f"here has {int(torch.bincount(groups).max())}")
    kept_groups = torch.unique(groups[keep], return_inverse=True)[1]
    generator = torch.Generator().manual_seed(seed)
    idx = within_alphabet_indices(kept_groups, split.per_class, episodes, way, shot, query, generator)
    classes = keep[idx.classes]
    for start in range(0, episodes, batch):
        part = EpisodeIndices(classes[start:start + batch], idx.drawings[start:start + batch])
        yield gather(split, part, shot)



def evaluate_within_alphabet(predict: Predictor | torch.nn.Module, split: FewShotSplit, way: int = LAKE_WAY,
                             shot: int = 1, query: int = 1, episodes: int = 1000, seed: int = 0, batch: int = 50,
                             progress: bool = True) -> Accuracy:
    """Mean per-episode accuracy and its 95% interval over `episodes` within-alphabet episodes drawn with
    `seed` (the same on any device), through matchnet.evaluate.accuracy (a module in eval mode, mode restored).
    Pass upright(split) for characters as drawn."""
    batches = within_alphabet_episodes(split, way, shot, query, episodes, seed, batch)
    return accuracy(predict, batches, way, shot, query, episodes, seed, batch, progress, desc="within-alphabet")


@dataclass
class LakeRunsAccuracy:
    """Lake et al.'s score of a model on their runs: percent correct over every test item (100 - Lake's error).
    Intervals, both 95%: `ci95_runs` = percentile bootstrap over runs (the primary one: a run shares one
    alphabet, one support set and one pair of drawers among its items, so its items are not independent and the
    run is the unit drawn); `ci95_items` = Wilson over items, which assumes independent items (narrower when runs
    differ in difficulty)."""

    mean: float
    items: int
    per_run: dict[str, float]
    ci95_runs: tuple[float, float]
    ci95_items: tuple[float, float]
    bootstrap: int
    seed: int

    def __str__(self) -> str:
        lo, hi = self.ci95_runs
        return (f"Lake's runs: {self.mean:.2f}% of {self.items} test items ({len(self.per_run)} runs; 95% interval "
                f"{lo:.2f}-{hi:.2f}, bootstrap over runs)")


def wilson95(correct: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval for a binomial proportion, in percent."""
    z, p = 1.959964, correct / n
    centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100 * (centre - half) / (1 + z * z / n), 100 * (centre + half) / (1 + z * z / n)


@torch.no_grad()
def evaluate_lake_runs(predict: Predictor | torch.nn.Module, runs: LakeRuns, bootstrap: int = 10000,
                       seed: int = 0) -> LakeRunsAccuracy:
    """Score as Lake's demo_classification.py does: each test item is classified among its run's training images
    (the argmax of the model's class scores; a tie goes to the first training file in name order, as Lake's
    argmax over sorted files), and the result is the percent of correct test items over all runs. Each run is
    one 20-way 1-shot episode, support = its training images, queries = its test items."""
    model = predict if isinstance(predict, torch.nn.Module) else None
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
        predict = model_predictor(model)
    r, n = runs.answers.shape
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    as_float = (lambda x: x.unsqueeze(2).float().div(255).to(device))  # [R, N, 1, S, S] in [0, 1]
    labels = torch.arange(n, device=device).expand(r, n)
    ep = Episodes(support=as_float(runs.training), support_labels=labels, query=as_float(runs.test),
                  query_labels=runs.answers.to(device), classes=labels, n_way=n)
    try:
        correct = (predict(ep).argmax(-1) == ep.query_labels).cpu()  # [R, N]
    finally:
        if model is not None:
            model.train(was_training)
    per_run = correct.double().mean(1)
    pick = torch.randint(r, (bootstrap, r), generator=torch.Generator().manual_seed(seed))
    means = per_run[pick].mean(1)  # every run holds N items: the mean of run means is the items' mean
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return LakeRunsAccuracy(100 * correct.double().mean().item(), correct.numel(),
                            {name: 100 * a for name, a in zip(runs.names, per_run.tolist())},
                            (100 * lo, 100 * hi), wilson95(int(correct.sum()), correct.numel()), bootstrap, seed)


class AlphabetEpisodeSampler:
    """Training episodes (EpisodeSampler's interface: .sample(E) -> Episodes, .generator for resume) of which a
    fraction `within` are hard: their classes come from one alphabet (drawn uniformly among those with at least
    `way` classes; a group is an alphabet at one rotation) or, when none is that big (60-way training), from as
    few as possible (all of one, then the next one's, alphabets in random order) and, with `same_drawer`, each
    support / query slot is drawn by one drawer for every class, as at test time. The rest are ordinary episodes
    over all classes. Each episode is hard with probability `within`; every draw is a fixed-size torch op on the
    split's device (no host sync, no per-episode Python)."""

    def __init__(self, split: FewShotSplit, way: int, shot: int, query: int, seed: int = 0,
                 within: float = 0.5, same_drawer: bool = True, shuffle_support: bool = False):
        if not 0.0 <= within <= 1.0:
            raise ValueError(f"within (the fraction of within-alphabet episodes) must be in [0, 1], got {within}")
        if way > split.num_classes:
            raise ValueError(f"{way}-way episodes need {way} classes; this split has {split.num_classes}")
        if shot + query > split.per_class:
            raise ValueError(f"{shot} shots + {query} queries exceed the {split.per_class} examples per class")
        self.split, self.way, self.shot, self.query = split, way, shot, query
        self.within, self.same_drawer, self.shuffle_support = within, same_drawer, shuffle_support
        groups, self.group_names = class_groups(split)
        self.groups = groups.to(split.device)
        self.small = (torch.bincount(groups) < way).to(split.device)  # [G]: too small to fill an episode alone
        self.generator = torch.Generator(device=split.device).manual_seed(seed)

    def indices(self, episodes: int) -> tuple[EpisodeIndices, torch.Tensor]:
        """The episodes' indices and which of them are within-alphabet (bool [E])."""
        g, dev = self.generator, self.split.device
        e, c, m = episodes, self.split.num_classes, self.shot + self.query
        hard = torch.rand(e, generator=g, device=dev) < self.within
        ordinary = torch.rand(e, c, generator=g, device=dev).argsort(dim=1)[:, :self.way]
        # integer keys = random rank of the class's alphabet x C + the class's place in a random order: sorting
        # takes one alphabet's classes in random order, then the next alphabet's (integers: no float ties).
        # Alphabets with >= way classes rank first, so an episode is one alphabet whenever one is big enough.
        noise = torch.rand(e, len(self.group_names), generator=g, device=dev) + 2.0 * self.small
        rank = noise.argsort(dim=1).argsort(dim=1)
        place = torch.rand(e, c, generator=g, device=dev).argsort(dim=1).argsort(dim=1)
        keys = rank[:, self.groups] * c + place
        grouped = keys.argsort(dim=1)[:, :self.way]
        classes = torch.where(hard.unsqueeze(1), grouped, ordinary)
        own = torch.rand(e, self.way, self.split.per_class, generator=g, device=dev).argsort(dim=2)[..., :m]
        shared = torch.rand(e, 1, self.split.per_class, generator=g, device=dev).argsort(dim=2)[..., :m]
        if self.same_drawer:
            drawings = torch.where(hard.view(e, 1, 1), shared.expand(e, self.way, m), own)
        else:
            drawings = own
        return EpisodeIndices(classes, drawings), hard

    def sample(self, episodes: int = 1) -> Episodes:
        idx, _ = self.indices(episodes)
        ep = gather(self.split, idx, self.shot)
        return shuffle_support(ep, self.generator) if self.shuffle_support else ep


def training_sampler(split: FewShotSplit, way: int, shot: int, query: int, seed: int = 0,
                     within_alphabet: float = 0.0, same_drawer: bool = True, augment: bool = False,
                     shuffle_support: bool = False, processed: FewShotSplit | None = None):
    """The sampler a training config asks for (what matchnet.train.build constructs): today's EpisodeSampler
    when within_alphabet = 0, augment = false and no `processed` copy (the same episode stream as before), else
    an AlphabetEpisodeSampler; with `processed` (the split through the demo's preprocessing) half its episodes
    come from that copy (matchnet.augment.MixedPreprocessSampler); wrapped in AugmentedSampler when augment =
    true. All have .sample(E) and one .generator to save for resume."""
    from .augment import AugmentedSampler, MixedPreprocessSampler
    from .episodes import EpisodeSampler

    if within_alphabet == 0.0 and not augment and processed is None:
        if shuffle_support:
            return EpisodeSampler(split, way, shot, query, seed=seed, shuffle_support=True)
        return EpisodeSampler(split, way, shot, query, seed=seed)
    sampler = AlphabetEpisodeSampler(split, way, shot, query, seed=seed, within=within_alphabet,
                                     same_drawer=same_drawer, shuffle_support=shuffle_support)
    if processed is not None:
        sampler = MixedPreprocessSampler(sampler, processed)
    return AugmentedSampler(sampler) if augment else sampler


def drawers_in_zip(path: str | Path) -> dict[str, list[int]]:
    """"Alphabet/characterNN" -> its drawer numbers (the DD of IIII_DD.png), sorted, read from a zip's names."""
    out: dict[str, list[int]] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            m = _DRAWER.search(name)
            if m:
                out.setdefault(f"{m.group(2)}/{m.group(3)}", []).append(int(m.group(4)))
    return {k: sorted(v) for k, v in out.items()}
