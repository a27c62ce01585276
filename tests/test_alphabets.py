"""Within-alphabet episodes (Lake et al.'s test), the hard-negative training sampler, the held-out-alphabet split
and the on-device affine augmentation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matchnet.alphabets import (AlphabetEpisodeSampler, alphabet_splits, class_groups, drawers_in_zip,
                                eligible_alphabets, evaluate_within_alphabet, upright, within_alphabet_episodes)
from matchnet.augment import AffineAugment, AugmentedSampler, MixedPreprocessSampler, with_app_preprocessing
from matchnet.data.fewshot import FewShotSplit
from matchnet.data.omniglot import Omniglot
from matchnet.episodes import EpisodeSampler

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"Big": 25, "Mid": 21, "Small": 6}  # characters per alphabet in the synthetic split


def coded_split(sizes: dict[str, int] = SIZES, rotations: bool = False) -> FewShotSplit:
    """Pixel (0, 0) holds the character index and pixel (0, 1) the drawer index (0..19), so the tests can read
    back which drawing of which character an episode used."""
    names = [f"{a}/character{i + 1:02d}" for a, n in sizes.items() for i in range(n)]
    images = torch.zeros(len(names), 20, 6, 6, dtype=torch.uint8)
    images[:, :, 0, 0] = torch.arange(len(names), dtype=torch.uint8).view(-1, 1)
    images[:, :, 0, 1] = torch.arange(20, dtype=torch.uint8)
    rots = range(4) if rotations else [0]
    src = [i for i in range(len(names)) for _ in rots]
    rot = [r for _ in names for r in rots]
    return FewShotSplit(images, torch.tensor(src), torch.tensor(rot),
                        [f"{names[i]}/rot{90 * r:03d}" for i, r in zip(src, rot)])


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(character, drawer) of upright coded images [..., 1, 6, 6]."""
    v = (x[..., 0, 0, :2] * 255).round().long()
    return v[..., 0], v[..., 1]


# ------------------------------------------------------------------------------------------- evaluation

def test_within_alphabet_episodes_one_alphabet_two_drawers():
    split = coded_split()
    groups, names = class_groups(split)
    seen = set()
    for ep in within_alphabet_episodes(split, 20, 1, 1, 60, seed=3, batch=25):
        s_char, s_drawer = decode(ep.support)
        q_char, q_drawer = decode(ep.query)
        for e in range(len(s_char)):
            alphabets = {split.names[c].split("/")[0] for c in s_char[e].tolist()}
            assert len(alphabets) == 1 and alphabets != {"Small"}  # never an alphabet with < 20 characters
            seen |= alphabets
            assert len(set(s_char[e].tolist())) == 20
            assert len(set(s_drawer[e].tolist())) == 1 and len(set(q_drawer[e].tolist())) == 1
            assert s_drawer[e, 0] != q_drawer[e, 0]  # support by one drawer, queries by another
            # query i shows the support character with label i
            assert torch.equal(q_char[e][ep.query_labels[e].argsort()], s_char[e][ep.support_labels[e].argsort()])
    assert seen == {"Big", "Mid"}


def test_within_alphabet_episodes_are_seeded_and_ignore_small_alphabets():
    def names_of(split, seed):
        ep = next(within_alphabet_episodes(split, 5, 1, 1, 40, seed=seed, batch=40))
        char, drawer = decode(ep.support)
        return [[split.names[c] for c in row] for row in char.tolist()], drawer

    a = coded_split()
    b = coded_split({"Big": 25, "Mid": 21, "Small": 6, "Tiny": 3})  # one more too-small alphabet
    assert names_of(a, 1)[0] == names_of(a, 1)[0]
    assert names_of(a, 1)[0] != names_of(a, 2)[0]
    na, da = names_of(a, 1)
    nb, db = names_of(b, 1)
    assert na == nb and torch.equal(da, db)


def test_within_alphabet_needs_a_big_enough_alphabet():
    with pytest.raises(ValueError, match="20-way within-alphabet"):
        next(within_alphabet_episodes(coded_split({"A": 10, "B": 12}), 20, 1, 1, 5, seed=0))


def test_upright_keeps_rotation_0_sorted_and_compact():
    split = coded_split({"Zed": 3, "Alef": 2}, rotations=True)
    up = upright(split)
    assert up.names == sorted(n for n in split.names if n.endswith("rot000"))
    assert up.images.shape[0] == 5 and up.source.tolist() == list(range(5))
    assert bool((up.rotation == 0).all())
    # the images follow their names
    for c, name in enumerate(up.names):
        orig = split.names.index(name)
        assert torch.equal(up.class_images(c), split.class_images(orig))
    assert upright(split, {"Zed"}).names == [n for n in up.names if n.startswith("Zed/")]
    with pytest.raises(ValueError, match="no upright classes"):
        upright(split, {"Nope"})


def test_eligible_alphabets_names_the_skipped():
    used, skipped = eligible_alphabets(coded_split(), 20)
    assert used == ["Big/rot000", "Mid/rot000"] and skipped == {"Small/rot000": 6}


def test_evaluate_within_alphabet_scores_a_perfect_and_a_blind_predictor():
    split = coded_split()

    def oracle(ep):  # reads the character code: always right
        s, _ = decode(ep.support)
        q, _ = decode(ep.query)
        match = (q.unsqueeze(2) == s.unsqueeze(1)).float()
        return torch.log(match @ torch.nn.functional.one_hot(ep.support_labels, ep.n_way).float() + 1e-9)

    acc = evaluate_within_alphabet(oracle, split, 20, episodes=30, seed=0, progress=False)
    assert acc.mean == pytest.approx(100.0) and acc.query == 1 and acc.way == 20
    blind = evaluate_within_alphabet(lambda ep: torch.zeros(*ep.query_labels.shape, ep.n_way), split, 5,
                                     episodes=30, seed=0, progress=False)
    assert blind.mean == pytest.approx(20.0)  # argmax of ties = label 0, one query of 5 per episode


# ---------------------------------------------------------------------------------------------- training

def test_sampler_hard_episodes_stay_in_one_alphabet_with_shared_drawers():
    split = coded_split(rotations=True)
    groups, _ = class_groups(split)
    sampler = AlphabetEpisodeSampler(split, 20, 1, 2, seed=0, within=1.0)
    idx, hard = sampler.indices(50)
    assert bool(hard.all())
    for e in range(50):
        assert len(set(groups[idx.classes[e]].tolist())) == 1  # one alphabet at one rotation
        assert len(set(idx.classes[e].tolist())) == 20
        assert bool((idx.drawings[e] == idx.drawings[e, :1]).all())  # every class: the same 3 drawers
        assert len(set(idx.drawings[e, 0].tolist())) == 3


def test_sampler_fills_from_the_fewest_alphabets_when_way_exceeds_one():
    split = coded_split({f"A{i}": 3 for i in range(10)})
    groups, _ = class_groups(split)
    idx, _ = AlphabetEpisodeSampler(split, 5, 1, 1, seed=1, within=1.0).indices(40)
    for e in range(40):
        counts = torch.bincount(groups[idx.classes[e]], minlength=10)
        assert sorted(counts[counts > 0].tolist()) == [2, 3]  # one whole alphabet, then 2 of the next


def test_sampler_mixes_hard_and_ordinary_episodes():
    split = coded_split(rotations=True)
    groups, _ = class_groups(split)
    sampler = AlphabetEpisodeSampler(split, 20, 1, 1, seed=0, within=0.3)
    idx, hard = sampler.indices(2000)
    assert 0.25 < hard.float().mean().item() < 0.35
    ordinary = ~hard
    spread = torch.tensor([len(set(groups[c].tolist())) for c in idx.classes[ordinary][:50]])
    assert bool((spread > 1).all())  # 20 classes drawn from 208 in 12 groups: never one group
    shared = (idx.drawings[ordinary] == idx.drawings[ordinary][:, :1]).all(dim=(1, 2))
    assert not bool(shared.any())
    ep = sampler.sample(4)
    assert ep.support.shape == (4, 20, 1, 6, 6) and ep.query.shape == (4, 20, 1, 6, 6)
    with pytest.raises(ValueError, match=r"within .* \[0, 1\]"):
        AlphabetEpisodeSampler(split, 5, 1, 1, within=1.5)


def test_sampler_resumes_from_its_generator_state():
    split = coded_split(rotations=True)
    a = AlphabetEpisodeSampler(split, 10, 1, 3, seed=7, within=0.5)
    a.sample(4)
    state = a.generator.get_state()
    first = a.sample(4)
    b = AlphabetEpisodeSampler(split, 10, 1, 3, seed=99, within=0.5)
    b.generator.set_state(state)
    second = b.sample(4)
    assert torch.equal(first.support, second.support) and torch.equal(first.query, second.query)


def test_alphabet_splits_hold_out_whole_alphabets():
    sizes = {"A": 22, "B": 25, "C": 30, "D": 5, "E": 40}
    names = [f"{a}/character{i + 1:02d}" for a, n in sizes.items() for i in range(n)]
    names += [f"Eval/character{i + 1:02d}" for i in range(21)]
    background = torch.tensor([not n.startswith("Eval") for n in names])
    data = Omniglot(torch.zeros(len(names), 20, 4, 4, dtype=torch.uint8), names, background)
    splits = alphabet_splits(data, val_alphabets=2, seed=0)
    val = {n.split("/")[0] for n in splits["val"].names}
    train = {n.split("/")[0] for n in splits["train"].names}
    assert len(val) == 2 and "D" not in val and not (val & train) and val | train == set(sizes)
    assert bool((splits["val"].rotation == 0).all()) and splits["train"].num_classes % 4 == 0
    assert splits["trainval"].num_classes == 4 * sum(sizes.values())
    assert {n.split("/")[0] for n in splits["test"].names} == {"Eval"}
    assert alphabet_splits(data, 2, seed=0)["val"].names == splits["val"].names  # seeded
    assert any({n.split("/")[0] for n in alphabet_splits(data, 2, seed)["val"].names} != val for seed in range(1, 6))
    with pytest.raises(ValueError, match="val_alphabets must be 1..4"):
        alphabet_splits(data, val_alphabets=5)


# ------------------------------------------------------------------------------------------ augmentation

def test_affine_augment_identity_when_off_and_bounded_when_on():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, 1, 28, 28)
    assert torch.allclose(AffineAugment(p=0.0)(x, g), x, atol=1e-5)
    theta = AffineAugment(rotate=10, shear=0, scale=(1, 1), translate=0, p=1.0).theta(500, g, x.device)
    lin = theta[:, :, :2]
    assert torch.allclose(lin @ lin.transpose(1, 2), torch.eye(2).expand(500, 2, 2), atol=1e-5)  # rotations
    angle = torch.atan2(lin[:, 1, 0], lin[:, 0, 0]).abs().max()
    assert 0.15 < angle.item() <= torch.deg2rad(torch.tensor(10.0)).item() + 1e-6
    full = AffineAugment(p=1.0).theta(500, g, x.device)
    assert full[:, :, 2].abs().max() <= 2 * 2 / 105 + 1e-6  # translation, normalised units


def test_affine_augment_distorts_each_image_and_keeps_the_ink():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(2, 5, 1, 28, 28)
    x[..., 8:20, 12:16] = 1.0  # a bar
    y = AffineAugment(p=1.0)(x, g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 + 1e-6
    assert not torch.allclose(y[0, 0], y[0, 1])  # each image its own distortion
    ratio = y.sum(dim=(-1, -2, -3)) / x.sum(dim=(-1, -2, -3))
    assert bool(((ratio > 0.5) & (ratio < 1.6)).all())  # scale 0.8..1.2 per axis: area 0.64..1.44


def test_augmented_sampler_keeps_the_interface_and_resumes():
    split = coded_split(rotations=True)
    base = EpisodeSampler(split, 5, 1, 2, seed=0)
    aug = AugmentedSampler(base, AffineAugment(p=1.0))
    assert aug.generator is base.generator
    state = aug.generator.get_state()
    ep = aug.sample(3)
    assert ep.support.shape == (3, 5, 1, 6, 6) and ep.query_labels.shape == (3, 10)
    again = AugmentedSampler(EpisodeSampler(split, 5, 1, 2, seed=5), AffineAugment(p=1.0))
    again.generator.set_state(state)
    assert torch.equal(again.sample(3).support, ep.support)
    plain = EpisodeSampler(split, 5, 1, 2, seed=0).sample(3)
    assert torch.equal(plain.support_labels, ep.support_labels) and not torch.equal(plain.support, ep.support)


def test_app_preprocessing_processes_a_shared_tensor_once(monkeypatch):
    import matchnet.inference as inference

    calls = []

    def fake(split, normalise_stroke=True):
        calls.append(split.images)
        return FewShotSplit(split.images + 1, split.source, split.rotation, split.names)

    monkeypatch.setattr(inference, "preprocess_split", fake)
    a = coded_split()
    b = FewShotSplit(a.images, a.source[:3], a.rotation[:3], a.names[:3])
    out = with_app_preprocessing({"a": a, "b": b, "c": coded_split({"X": 2})})
    assert len(calls) == 2 and out["a"].images is out["b"].images
    assert out["b"].names == b.names and torch.equal(out["a"].images, a.images + 1)


# -------------------------------------------------------------------------------------------- real data

def _real_root(real_omniglot_root) -> Path | None:
    local = ROOT / "data"
    if (local / "omniglot-py").is_dir():
        return local
    return real_omniglot_root


def test_real_omniglot_drawers_and_alphabets(real_omniglot_root):
    root = _real_root(real_omniglot_root)
    if root is None:
        pytest.skip("the real Omniglot data (./data/omniglot-py or ../shared/data/omniglot) is not here")
    folder = root / "omniglot-py"
    zips = [folder / f"{p}.zip" for p in ("images_background", "images_evaluation")]
    if all(z.is_file() for z in zips):  # drawers 01..20 for every character: drawing index j is drawer j + 1
        drawers = {k: v for z in zips for k, v in drawers_in_zip(z).items()}
        assert len(drawers) == 1623 and all(v == list(range(1, 21)) for v in drawers.values())
    from matchnet.data import load_omniglot, omniglot_splits

    data = load_omniglot(root)
    test = upright(omniglot_splits(data, "lake")["test"])
    used, skipped = eligible_alphabets(test, 20)
    assert len(used) == 20 and skipped == {}  # Lake's 20 evaluation alphabets all have >= 20 characters
    splits = alphabet_splits(data)
    val = {n.split("/")[0] for n in splits["val"].names}
    assert val == {"Braille", "Greek", "Hebrew", "Japanese_(hiragana)", "Sanskrit"}  # documented in the config
    assert not val & {n.split("/")[0] for n in splits["train"].names}
    assert all(data.background[s] for s in splits["trainval"].source.tolist())
    ep = next(within_alphabet_episodes(test, 20, 1, 1, 2, seed=0))
    assert ep.support.shape == (2, 20, 1, 28, 28)
    # a vinyals checkpoint's test (its test split, Gurmukhi's 4 characters skipped) draws the same episodes as
    # the docs' 12 alphabets cut from images_evaluation, so the CLI and docs/results/within_alphabet.md agree
    vin = upright(omniglot_splits(data, "vinyals")["test"])
    assert eligible_alphabets(vin, 20)[1] == {"Gurmukhi/rot000": 4}
    twelve = upright(test, {n.split("/")[0] for n in vin.names} - {"Gurmukhi"})
    for way in (20, 5):
        a = next(within_alphabet_episodes(vin, way, 1, 1, 50, seed=0, batch=50))
        b = next(within_alphabet_episodes(twelve, way, 1, 1, 50, seed=0, batch=50))
        assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)


def test_training_sampler_picks_the_plain_stream_unless_asked():
    from matchnet.alphabets import training_sampler

    split = coded_split(rotations=True)
    plain = training_sampler(split, 5, 1, 2, seed=3)
    assert type(plain) is EpisodeSampler
    assert torch.equal(plain.sample(2).support, EpisodeSampler(split, 5, 1, 2, seed=3).sample(2).support)
    hard = training_sampler(split, 5, 1, 2, seed=3, within_alphabet=0.5)
    assert isinstance(hard, AlphabetEpisodeSampler) and hard.within == 0.5
    both = training_sampler(split, 5, 1, 2, seed=3, within_alphabet=1.0, augment=True, shuffle_support=True)
    assert isinstance(both, AugmentedSampler) and both.sampler.shuffle_support
    ep = both.sample(3)
    assert sorted(ep.support_labels[0].tolist()) == list(range(5))
    split = coded_split()  # upright: the codes in pixel (0, 0) can be read back
    unshuffled = AlphabetEpisodeSampler(split, 20, 1, 1, seed=0, within=1.0).sample(50).support_labels
    shuffled = AlphabetEpisodeSampler(split, 20, 1, 1, seed=0, within=1.0, shuffle_support=True).sample(50)
    assert bool((unshuffled == torch.arange(20)).all())
    assert not bool((shuffled.support_labels == torch.arange(20)).all())
    # the shuffle moves images and labels together: support image i still shows class label i's character
    s_char, _ = decode(shuffled.support)
    q_char, _ = decode(shuffled.query)
    for e in range(5):
        by_label = s_char[e][shuffled.support_labels[e].argsort()]
        assert torch.equal(q_char[e][shuffled.query_labels[e].argsort()], by_label)
        assert len(set(by_label.tolist())) == 20


def marked(split: FewShotSplit) -> FewShotSplit:
    """The same split with pixel (5, 5) set: a stand-in for its preprocessed copy that the tests can see."""
    images = split.images.clone()
    images[..., 5, 5] = 255
    return FewShotSplit(images, split.source, split.rotation, split.names)


def test_mixed_preprocessing_takes_whole_episodes_from_either_copy():
    split = coded_split()
    mixed = MixedPreprocessSampler(AlphabetEpisodeSampler(split, 5, 1, 2, seed=4, within=0.5), marked(split))
    assert mixed.generator is mixed.sampler.generator
    state = mixed.generator.get_state()
    ep = mixed.sample(400)
    plain = AlphabetEpisodeSampler(split, 5, 1, 2, seed=4, within=0.5).sample(400)
    # the same characters and drawers as the sampler it wraps: only the copy they are read from changes
    for a, b in ((ep.support, plain.support), (ep.query, plain.query)):
        assert all(torch.equal(x, y) for x, y in zip(decode(a), decode(b)))
    mark_s, mark_q = ep.support[..., 0, 5, 5] > 0.5, ep.query[..., 0, 5, 5] > 0.5  # [E, N*k], [E, N*q]
    processed = mark_s.all(1)
    assert torch.equal(processed, mark_s.any(1)) and torch.equal(processed, mark_q.all(1))  # whole episodes
    assert torch.equal(processed, mark_q.any(1))
    assert 0.4 < processed.float().mean().item() < 0.6
    again = MixedPreprocessSampler(AlphabetEpisodeSampler(split, 5, 1, 2, seed=9, within=0.5), marked(split))
    again.generator.set_state(state)  # resume: one generator state gives the same stream
    assert torch.equal(again.sample(400).support, ep.support)
    none = MixedPreprocessSampler(AlphabetEpisodeSampler(split, 5, 1, 2, seed=4, within=0.5), marked(split), 0.0)
    assert torch.equal(none.sample(400).support, plain.support)
    with pytest.raises(ValueError, match="same split"):
        MixedPreprocessSampler(AlphabetEpisodeSampler(split, 5, 1, 2), marked(coded_split(rotations=True)))


def test_a_mixed_preprocessing_recipe_trains_through_the_engine(tmp_path):
    """preprocess = "mixed": the demo's preprocessing of the training split (the real one) beside the drawn
    images; the config says so, and validation stays on the drawn images."""
    import json

    from conftest import synthetic_glyphs
    from matchnet.train import TrainConfig, train

    images = synthetic_glyphs(20, 0)
    names = [f"Alpha{i // 10}/character{i % 10 + 1:02d}" for i in range(20)]

    def part(ids):
        return FewShotSplit(images, torch.tensor(list(ids)), torch.zeros(len(ids), dtype=torch.long),
                            [names[i] for i in ids])
    splits = {"train": part(range(10)), "val": part(range(10, 20))}
    cfg = TrainConfig(name="m", way=5, shot=1, query=2, meta_batch=2, steps=2, hidden=8, within_alphabet=0.5,
                      preprocess="mixed", val_tasks=[[5, 1]], val_every=2, val_episodes=10, log_every=1,
                      checkpoint_every=2, device="cpu", out_dir=str(tmp_path / "run"), progress=False)
    assert train(cfg, splits=splits)["steps"] == 2
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["preprocess"] == "mixed"
    with pytest.raises(ValueError, match="preprocess must be one of none, app, mixed"):
        TrainConfig(**{**vars(cfg), "preprocess": "half"}).check()


def test_a_within_alphabet_recipe_trains_and_validates_through_the_engine(tmp_path):
    """The config keys of train/configs/omniglot_lake_within.toml, end to end on synthetic glyphs: hard
    within-alphabet episodes, affine augmentation, FCE with shuffled support, within-alphabet validation."""
    import json

    from conftest import synthetic_glyphs
    from matchnet.train import TrainConfig, train

    images = synthetic_glyphs(30, 0)
    names = [f"Alpha{i // 10}/character{i % 10 + 1:02d}" for i in range(30)]

    def part(ids, rotations=(0,)):
        ids = [(i, r) for i in ids for r in rotations]
        return FewShotSplit(images, torch.tensor([i for i, _ in ids]), torch.tensor([r for _, r in ids]),
                            [names[i] for i, _ in ids])
    splits = {"train": part(range(20), (0, 1)), "val": part(range(20, 30))}
    cfg = TrainConfig(name="w", way=5, shot=1, query=2, meta_batch=2, steps=4, hidden=8, fce=True,
                      within_alphabet=0.5, augment=True, val_protocol="within-alphabet", val_tasks=[[5, 1]],
                      val_every=4, val_episodes=10, log_every=2, checkpoint_every=2, device="cpu",
                      out_dir=str(tmp_path / "run"), progress=False)
    train(cfg, splits=splits, stop_after=2)
    summary = train(cfg, splits=splits)  # resumes the sampler's generator too
    assert summary["steps"] == 4
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "val_5w1s" in log[-1] and (tmp_path / "run" / "best" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="no validation alphabet has 20 characters"):
        train(TrainConfig(**{**vars(cfg), "val_tasks": [[20, 1]], "out_dir": str(tmp_path / "bad")}),
              splits=splits)


def test_val_within_scores_candidates_paired_on_both_inputs(real_omniglot_root, tmp_path):
    """train/val_within.py: the same checkpoint twice differs by exactly 0 on every column (same episodes), both
    inputs are scored, and a bad --model is one line naming it."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "train"))
    import val_within

    from matchnet.checkpoint import save_model
    from matchnet.model import MatchingNetwork

    torch.manual_seed(0)
    folder = save_model(MatchingNetwork(hidden=8), tmp_path / "ckpt")
    out = tmp_path / "val.json"
    val_within.main(["--data-root", str(real_omniglot_root), "--model", f"a={folder}", "--model", f"b={folder}",
                     "--episodes", "20", "--out", str(out)])
    record = json.loads(out.read_text())
    keys = {f"within {w}w1s, {i}" for w in (20, 5) for i in ("as drawn", "demo preprocessing")}
    assert set(record["results"]["a"]) == keys and record["reference"] == "a"
    for entry in record["results"]["b"].values():
        assert entry["minus_ref"] == 0.0 and 0.0 <= entry["mean"] <= 100.0
    assert "minus_ref" not in record["results"]["a"]["within 20w1s, as drawn"]
    with pytest.raises(SystemExit, match="NAME=FOLDER"):
        val_within.main(["--data-root", str(real_omniglot_root), "--model", str(tmp_path / "nowhere")])


def test_val_within_alphabets_restricts_the_episodes(real_omniglot_root, tmp_path, monkeypatch):
    """--alphabets Hebrew: every episode is built from Hebrew's characters alone (the alphabet both the vinyals
    and lake-alphabets splits hold out), the record says so, and an alphabet outside validation is one line."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "train"))
    import val_within

    import matchnet.alphabets as alphabets_module
    from matchnet.checkpoint import save_model
    from matchnet.model import MatchingNetwork

    seen: list[set[str]] = []
    real = alphabets_module.within_alphabet_episodes

    def spy(split, *args, **kwargs):
        seen.append({name.split("/")[0] for name in split.names})
        return real(split, *args, **kwargs)

    monkeypatch.setattr(alphabets_module, "within_alphabet_episodes", spy)
    folder = save_model(MatchingNetwork(hidden=8), tmp_path / "ckpt")
    out = tmp_path / "val.json"
    val_within.main(["--data-root", str(real_omniglot_root), "--model", f"a={folder}", "--episodes", "10",
                     "--alphabets", "Hebrew", "--out", str(out)])
    assert seen and all(names == {"Hebrew"} for names in seen), seen
    assert json.loads(out.read_text())["alphabets"] == ["Hebrew"]
    with pytest.raises(SystemExit, match="Tengwar"):
        val_within.main(["--data-root", str(real_omniglot_root), "--model", f"a={folder}", "--alphabets", "Tengwar"])


@pytest.mark.parametrize("mode, preprocessed", [("app", {"train", "val"}), ("mixed", {"t"})])
def test_the_engine_preprocesses_what_each_recipe_says(tmp_path, monkeypatch, mode, preprocessed):
    """preprocess = "app": every split through the demo's preprocessing (validation too); "mixed": a copy of the
    training split only, beside the drawn one."""
    import matchnet.augment as augment
    from conftest import synthetic_glyphs
    from matchnet.train import TrainConfig, train

    calls: list[set[str]] = []
    real = augment.with_app_preprocessing

    def spy(splits):
        calls.append(set(splits))
        return real(splits)

    monkeypatch.setattr(augment, "with_app_preprocessing", spy)
    images = synthetic_glyphs(20, 0)
    names = [f"Alpha{i // 10}/character{i % 10 + 1:02d}" for i in range(20)]
    splits = {k: FewShotSplit(images, torch.tensor(list(ids)), torch.zeros(len(ids), dtype=torch.long),
                              [names[i] for i in ids]) for k, ids in (("train", range(10)), ("val", range(10, 20)))}
    cfg = TrainConfig(name="m", way=5, shot=1, query=2, meta_batch=2, steps=1, hidden=8, within_alphabet=0.5,
                      preprocess=mode, val_tasks=[[5, 1]], val_every=1, val_episodes=4, log_every=1,
                      checkpoint_every=1, device="cpu", out_dir=str(tmp_path / "run"), progress=False)
    assert train(cfg, splits=splits)["steps"] == 1
    assert calls == [preprocessed]
