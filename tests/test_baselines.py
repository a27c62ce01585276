"""The paper's baselines: each trains on a tiny synthetic set and predicts the right shapes; the feature path
evaluates exactly like matchnet.evaluate; nearest neighbour is exact; the LRUA memory follows Santoro et al.'s
equations; fine-tuning uses the support set only and treats every episode on its own."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from matchnet.baselines import (ClassifierConfig, FeatureEpisodes, FinetuneConfig, MANNConfig, SiameseConfig,
                                as_predictor, class_features, config_from_dict, evaluate_features,
                                finetune_episodes, finetune_predictor, load_encoder, load_mann, lrua_step,
                                mann_predictor, nearest_neighbour, pixel_features, pixels_predictor,
                                select_on_validation, split_encoder, train_classifier, train_mann, train_siamese)
from matchnet.baselines.features import feature_episodes, nearest_neighbour_log_probs
from matchnet.baselines.mann import MANN, MemoryState
from matchnet.baselines.report import write_markdown
from matchnet.baselines.siamese import load_siamese, pair_indices, sample_pairs, verification_predictor
from matchnet.data import FewShotSplit
from matchnet.episodes import evaluation_episodes
from matchnet.evaluate import evaluate
from matchnet.model import Conv4

from conftest import synthetic_glyphs

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def glyphs() -> dict[str, FewShotSplit]:
    """24 synthetic 28x28 characters (a few thick strokes each, every drawing shifted a little), 20 drawings."""
    images = synthetic_glyphs(24, seed=0)

    def part(ids, rotations=0):
        return FewShotSplit(images, torch.tensor(ids), torch.full((len(ids),), rotations), [f"g{i}" for i in ids])
    return {"train": part(list(range(16))), "val": part(list(range(16, 20))), "test": part(list(range(20, 24)), 1)}


def tiny(cls, tmp_path, **kw):
    base = dict(steps=4, val_every=2, val_episodes=5, log_every=1, checkpoint_every=2, progress=False, warmup_steps=1)
    if "val_tasks" in cls.__dataclass_fields__:
        base["val_tasks"] = [[4, 1]]
    return config_from_dict(cls, {**base, **kw})


def random_episodes(e=3, way=4, shot=2, queries=5, dim=(64, 3, 3), seed=0) -> FeatureEpisodes:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(way).repeat_interleave(shot).expand(e, -1)
    return FeatureEpisodes(torch.rand(e, way * shot, *dim, generator=g), labels,
                           torch.rand(e, queries, *dim, generator=g), way)


# -- evaluation on features ------------------------------------------------------------------------------------

def test_feature_evaluation_gives_exactly_matchnet_evaluate(glyphs):
    """Same seed -> same episodes, same statistic, whether images are encoded per episode or once per split."""
    encoder = Conv4().eval()
    table = class_features(glyphs["test"], encoder)
    for way, shot in ((4, 1), (3, 5)):
        core = evaluate(as_predictor(nearest_neighbour, encoder), glyphs["test"], way, shot, query=5, episodes=30,
                        seed=11, batch=7, progress=False)
        ours = evaluate_features(nearest_neighbour, table, way, shot, query=5, episodes=30, seed=11, batch=13)
        assert (ours.mean, ours.ci95, ours.episodes) == pytest.approx((core.mean, core.ci95, core.episodes), abs=1e-9)
    assert table.shape == (4, 20, 64)


def test_pixels_nearest_neighbour_is_exact_on_a_hand_made_case():
    # Class 0 has two shots pointing two ways; class 1 two copies of one direction. The query is nearest to a
    # class-0 shot (cos 0.9988), while the mean of class 0 is farther from it than class 1 is: nearest
    # neighbour says 0 where matching to class means would say 1.
    images = torch.zeros(4, 1, 2, 2)
    images[0, 0, 0, 0] = 1.0  # [1, 0, 0, 0]
    images[1, 0, 0, 1] = 1.0  # [0, 1, 0, 0]
    images[2, 0, 0, 0], images[2, 0, 0, 1] = 0.8, 0.6  # [0.8, 0.6, 0, 0]
    images[3] = images[2]
    query = torch.zeros(2, 1, 2, 2)
    query[0, 0, 0, 0], query[0, 0, 0, 1] = 1.0, 0.05
    query[1, 0, 0, 0], query[1, 0, 0, 1] = 0.7, 0.62  # cos 0.999 with [0.8, 0.6]: class 1
    ep = FeatureEpisodes(pixel_features(images).unsqueeze(0), torch.tensor([[0, 0, 1, 1]]),
                         pixel_features(query).unsqueeze(0), 2)
    log_probs = pixels_predictor(ep)
    assert log_probs.shape == (1, 2, 2)
    assert log_probs.argmax(-1).tolist() == [[0, 1]]
    expected = torch.tensor([1.0 / math.hypot(1, 0.05), (0.7 * 0.8 + 0.62 * 0.6) / math.hypot(0.7, 0.62)])
    best = torch.stack([log_probs[0, 0, 0] - log_probs[0, 0, 1], log_probs[0, 1, 1] - log_probs[0, 1, 0]])
    # log-prob gaps = scale x (best cosine of the right class - best cosine of the other)
    other = torch.tensor([(0.8 + 0.03) / math.hypot(1, 0.05), 0.7 / math.hypot(0.7, 0.62)])
    assert torch.allclose(best, 10 * (expected - other), atol=1e-5)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(1, 2))


# -- training each baseline -----------------------------------------------------------------------------------

def test_classifier_trains_and_its_features_predict(glyphs, tmp_path):
    cfg = tiny(ClassifierConfig, tmp_path, batch=32)
    summary = train_classifier(cfg, glyphs, tmp_path / "clf", CPU)
    assert summary["steps"] == 4 and (tmp_path / "clf" / "final" / "model.safetensors").is_file()
    encoder = load_encoder(tmp_path / "clf" / "best")
    ep = next(evaluation_episodes(glyphs["test"], 4, 1, 3, episodes=2, seed=0))
    log_probs = as_predictor(nearest_neighbour, encoder)(ep)
    assert log_probs.shape == (2, 12, 4) and torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 12))
    # resuming a finished run trains nothing more; the shipped format reloads to the same function
    again = load_encoder(tmp_path / "clf" / "final")
    x = torch.rand(5, 1, 28, 28)
    assert again(x).shape == (5, 64)


def test_a_time_limit_ends_training_early_and_counts_as_finished(glyphs, tmp_path):
    cfg = tiny(ClassifierConfig, tmp_path, batch=8, steps=50, time_limit=1e-9)
    summary = train_classifier(cfg, glyphs, tmp_path / "clf", CPU)
    assert summary["steps"] == 1 and summary["stopped_at_time_limit"]
    assert (tmp_path / "clf" / "final" / "config.json").is_file() and (tmp_path / "clf" / "best").is_dir()


def test_siamese_pairs_are_same_then_different(glyphs):
    g = torch.Generator().manual_seed(0)
    c1, d1, c2, d2, same = pair_indices(5, 20, 400, g)
    assert torch.equal(c1[:200], c2[:200]) and (d1[:200] != d2[:200]).all()
    assert (c1[200:] != c2[200:]).all() and same[:200].eq(1).all() and same[200:].eq(0).all()
    assert c1.max() < 5 and d2.max() < 20


def test_siamese_trains_and_predicts_with_cosine_and_with_its_own_head(glyphs, tmp_path):
    # 40 steps at a high rate: enough for the same/different task to be learnt on these glyphs (an untrained
    # head scores exactly chance, 50%, on balanced pairs; trained, 72-85% over seeds 0-2 on unseen classes)
    cfg = tiny(SiameseConfig, tmp_path, pairs=32, steps=40, val_every=40, checkpoint_every=40, lr=1e-2)
    train_siamese(cfg, glyphs, tmp_path / "siam", CPU)
    net = load_siamese(tmp_path / "siam" / "best").eval()
    first, second, same = sample_pairs(glyphs["test"], 400, torch.Generator().manual_seed(1))
    with torch.no_grad():
        verified = ((net(first, second) > 0).float() == same).float().mean().item()
    assert verified > 0.65, verified  # test classes never seen in training; chance is 0.5
    encoder = load_encoder(tmp_path / "siam" / "best")
    table = class_features(glyphs["test"], encoder)
    acc = evaluate_features(nearest_neighbour, table, 4, 1, query=5, episodes=20, seed=0)
    assert table.shape == (4, 20, 64) and acc.mean > 50, acc  # 4-way: chance is 25%
    ep, _ = next(feature_episodes(table, 4, 2, 3, episodes=2, seed=0))
    log_probs = verification_predictor(net)(ep)
    assert log_probs.shape == (2, 12, 4)
    # the class score is the best p(same) logit over that class's shots, computed here the slow way
    q, s = ep.query[1, 5], ep.support[1]
    logits = torch.stack([net.head((q - s[i]).abs()) for i in range(8)]).view(4, 2).amax(1)
    assert torch.allclose(log_probs[1, 5], torch.log_softmax(logits, 0), atol=1e-5)


@pytest.mark.parametrize("offset_labels", [True, False])
def test_mann_trains_and_predicts_n_way(glyphs, tmp_path, offset_labels):
    cfg = tiny(MANNConfig, tmp_path, way=4, shots=[1, 2], meta_batch=3, hidden=16, slots=8, width=5, heads=2,
               offset_labels=offset_labels)
    train_mann(cfg, glyphs, tmp_path / "mann", CPU)
    model = load_mann(tmp_path / "mann" / "best")
    table = class_features(glyphs["test"], pixel_features)
    ep, _ = next(feature_episodes(table, 4, 2, 3, episodes=2, seed=0))
    log_probs = mann_predictor(model)(ep)
    assert log_probs.shape == (2, 12, 4) and torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 12))
    with pytest.raises(ValueError, match="4-way"):
        mann_predictor(model)(replace(ep, n_way=5))


# -- the MANN's memory --------------------------------------------------------------------------------------------

def lrua_reference(memory, read_w, usage, keys, alpha, gamma):
    """Santoro et al. 2016, section 3.2, one batch element, written with loops over slots and heads."""
    slots, heads = memory.shape[0], keys.shape[0]
    # w^lu_{t-1}: 1 on the `heads` least-used slots (n = number of reads); ties to the lowest index
    ranked = sorted(range(slots), key=lambda i: (float(usage[i]), i))
    lu = torch.zeros(slots)
    for i in ranked[:heads]:
        lu[i] = 1.0
    write_w = torch.zeros(heads, slots)
    for h in range(heads):
        s = 1 / (1 + math.exp(-float(alpha[h])))
        for i in range(slots):
            write_w[h, i] = s * read_w[h, i] + (1 - s) * lu[i]
    new = memory.clone()
    new[ranked[0]] = 0.0  # the least-used location is zeroed before writing
    for i in range(slots):
        for h in range(heads):
            new[i] = new[i] + write_w[h, i] * keys[h]
    new_read = torch.zeros(heads, slots)
    reads = []
    for h in range(heads):
        sims = []
        for i in range(slots):
            norm = max(float(keys[h].norm()), 1e-8) * max(float(new[i].norm()), 1e-8)
            sims.append(float(keys[h] @ new[i]) / norm)
        z = sum(math.exp(k) for k in sims)
        for i in range(slots):
            new_read[h, i] = math.exp(sims[i]) / z
        reads.append(sum(new_read[h, i] * new[i] for i in range(slots)))
    new_usage = gamma * usage + new_read.sum(0) + write_w.sum(0)
    return new, new_read, new_usage, torch.cat(reads)


def test_lrua_memory_matches_a_loop_written_from_santoro_et_al():
    g = torch.Generator().manual_seed(3)
    batch, slots, width, heads, gamma = 2, 6, 3, 2, 0.95
    state = MemoryState(torch.zeros(batch, slots, width), torch.zeros(batch, heads, slots), torch.zeros(batch, slots),
                        torch.zeros(batch, heads * width))
    ref = [(torch.zeros(slots, width), torch.zeros(heads, slots), torch.zeros(slots)) for _ in range(batch)]
    for t in range(7):  # enough steps that slots fill up, get zeroed and are written again
        keys = torch.tanh(torch.randn(batch, heads, width, generator=g) * 2)
        alpha = torch.randn(batch, heads, generator=g) * 2
        state = lrua_step(state, keys, alpha, gamma)
        for b in range(batch):
            m, w, u, r = lrua_reference(*ref[b], keys[b], alpha[b], gamma)
            ref[b] = (m, w, u)
            assert torch.allclose(state.memory[b], m, atol=1e-5), t
            assert torch.allclose(state.read_weights[b], w, atol=1e-6), t
            assert torch.allclose(state.usage[b], u, atol=1e-5), t
            assert torch.allclose(state.reads[b], r, atol=1e-5), t
    assert (state.memory.abs().sum(-1) > 0).sum() >= heads  # something was written


@pytest.mark.parametrize("offset_labels", [True, False])
def test_mann_queries_are_independent_of_each_other(offset_labels):
    torch.manual_seed(0)
    model = MANN(input_dim=12, way=3, hidden=8, slots=5, width=4, heads=2, offset_labels=offset_labels).eval()
    support, labels = torch.rand(2, 6, 12), torch.tensor([[0, 1, 2, 2, 1, 0]] * 2)
    query = torch.rand(2, 4, 12)
    _, logits = model(support, labels, query)
    changed = query.clone()
    changed[:, 1:] = torch.rand(2, 3, 12)
    _, logits2 = model(support, labels, changed)
    assert torch.allclose(logits[:, 0], logits2[:, 0], atol=1e-6)  # query 0 depends on S and itself only
    assert not torch.allclose(logits[:, 1:], logits2[:, 1:])
    # the support labels are read: relabelling the support set changes the queries' outputs
    _, logits3 = model(support, (labels + 1) % 3, query)
    assert not torch.allclose(logits3, logits)


# -- fine-tuning -------------------------------------------------------------------------------------------------

def test_finetuning_never_sees_query_labels(glyphs):
    """Poisoned query labels (permuted, or garbage) must not change a single prediction."""
    torch.manual_seed(0)
    frozen, tuned = split_encoder(Conv4().eval(), blocks=1)
    predict = as_predictor(finetune_predictor(tuned, "cosine", lr=0.01, steps=3), frozen)
    ep = next(evaluation_episodes(glyphs["test"], 4, 1, 3, episodes=3, seed=0))
    clean = predict(ep)
    for poison in (ep.query_labels.flip(1), torch.full_like(ep.query_labels, 10 ** 6)):
        assert torch.equal(predict(replace(ep, query_labels=poison)), clean)
    # ... and it does use the support labels: relabelling the support set moves the predictions with it
    swapped = replace(ep, support_labels=(ep.support_labels + 1) % 4)
    assert torch.equal(predict(swapped).argmax(-1), (clean.argmax(-1) + 1) % 4)


@pytest.mark.parametrize("head", ["cosine", "softmax"])
def test_finetuning_uses_no_query_and_treats_each_episode_alone(head):
    torch.manual_seed(0)
    _, tuned = split_encoder(Conv4().eval(), blocks=1)
    ep = random_episodes(e=3)
    together = finetune_episodes(tuned, ep, head, lr=0.01, record=[4])[4]
    # one episode at a time: identical (no gradient or optimizer state crosses episodes)
    for i in range(3):
        alone = FeatureEpisodes(ep.support[i:i + 1], ep.support_labels[i:i + 1], ep.query[i:i + 1], ep.n_way)
        assert torch.allclose(finetune_episodes(tuned, alone, head, lr=0.01, record=[4])[4], together[i:i + 1],
                              atol=1e-5)
    # no transduction: other queries do not affect query 0's prediction
    other = FeatureEpisodes(ep.support, ep.support_labels, torch.cat([ep.query[:, :1], torch.rand(3, 4, 64, 3, 3)], 1),
                            ep.n_way)
    assert torch.allclose(finetune_episodes(tuned, other, head, lr=0.01, record=[4])[4][:, 0], together[:, 0],
                          atol=1e-5)
    # the network's own weights are untouched (each episode tunes a copy)
    assert all(p.grad is None for p in tuned.parameters())


def test_finetuning_step_zero_is_plain_matching_and_later_steps_fit_the_support_set():
    torch.manual_seed(0)
    _, tuned = split_encoder(Conv4().eval(), blocks=1)
    ep = random_episodes(e=4, way=5, shot=1)
    out = finetune_episodes(tuned, ep, "cosine", lr=0.01, record=[0, 20])
    with torch.no_grad():
        f_s, f_q = tuned(ep.support.flatten(0, 1)), tuned(ep.query.flatten(0, 1))
    plain = nearest_neighbour_log_probs(f_s.view(4, 5, -1), ep.support_labels, f_q.view(4, 5, -1), 5)
    assert torch.allclose(out[0], plain, atol=1e-5)
    assert not torch.allclose(out[20], out[0])
    # the softmax head, trained on S', classifies the support examples themselves correctly after training
    support_as_query = FeatureEpisodes(ep.support, ep.support_labels, ep.support, 5)
    fitted = finetune_episodes(tuned, support_as_query, "softmax", lr=0.05, record=[0, 30])
    assert torch.allclose(fitted[0].exp(), torch.full((4, 5, 5), 0.2))  # zero head: uniform before training
    assert (fitted[30].argmax(-1) == ep.support_labels).float().mean() == 1.0


def test_selection_on_validation_picks_the_best_tried_setting(glyphs):
    frozen, tuned = split_encoder(Conv4().eval(), blocks=1)
    table = class_features(glyphs["val"], frozen)
    cfg = FinetuneConfig(lrs=[0.001, 0.01], steps=[1, 2], val_episodes=6, batch=4)
    chosen = select_on_validation(tuned, table, "cosine", cfg, columns=((4, 1), (3, 2)))
    assert set(chosen) == {"4w1s", "3w2s"}
    for c in chosen.values():
        tried = {(float(lr), int(k)): v for lr, curve in c["tried"].items() for k, v in curve.items() if k != "0"}
        assert c["val_acc"] == max(tried.values()) and tried[(c["lr"], c["steps"])] == c["val_acc"]


# -- configs and the report ------------------------------------------------------------------------------------

def test_configs_reject_unknown_options_and_wrong_types():
    with pytest.raises(ValueError, match="unknown option"):
        config_from_dict(ClassifierConfig, {"stepz": 3})
    with pytest.raises(ValueError, match="steps should be int"):
        config_from_dict(SiameseConfig, {"steps": "many"})
    with pytest.raises(ValueError, match="pairs must be even"):
        config_from_dict(SiameseConfig, {"pairs": 7})
    assert config_from_dict(FinetuneConfig, {"scale": 5}).scale == 5.0


def test_report_never_shows_a_paper_number_as_ours(tmp_path):
    paper = {"pixels": ("Pixels", "Cosine", "N", (41.7, 63.2, 26.7, 42.6))}
    row = {"row": "pixels", "accuracy": {"5w1s": {"mean": 50.0, "ci95": 1.0}}, "episodes": 1000, "seed": 0,
           "hardware": "cpu", "seconds": 1.0, "command": "python train/run.py table omniglot", "checkpoint": None}
    text = write_markdown([row], tmp_path / "t.md", paper, {}, FinetuneConfig()).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("| Pixels"))
    assert "50.00 ± 1.00 *(41.7)*" in line and "not measured *(63.2)*" in line
    assert "python train/run.py table omniglot" in text


def test_report_prints_only_numbers_from_its_records(tmp_path):
    """The generated section has no hand-typed numbers: every decimal in it comes from the rows or the
    shorter-runs record (hand-written notes live in docs/results/omniglot_table_notes.md)."""
    import json
    import re

    paper = {"siamese": ("Siamese", "Cosine", "N", (96.7, 98.4, 88.0, 96.5))}
    accuracy = {k: {"mean": m, "ci95": 0.31} for k, m in zip(("5w1s", "5w5s", "20w1s", "20w5s"),
                                                              (95.67, 98.69, 86.61, 95.03))}
    row = {"row": "siamese", "accuracy": accuracy, "episodes": 1000, "seed": 0, "hardware": "cpu", "seconds": 3.0,
           "command": "python train/run.py table omniglot", "checkpoint": str(tmp_path / "gone"),
           "trained": {"steps": 12000, "seconds": 4208, "hardware": "cpu"}}
    earlier = {"source_commit": "abcdef0123", "runs": {"siamese": {
        "steps": 3000, "train_seconds": 1060, "trained_on": "cpu", "best_val_20w1s": 76.02,
        "rows": {"siamese": {"accuracy": {k: {"mean": m, "ci95": 0.4} for k, m in
                                          zip(("5w1s", "5w5s", "20w1s", "20w5s"), (91.26, 96.54, 75.7, 88.69))}}}}}}
    record = tmp_path / "shorter.json"
    record.write_text(json.dumps(earlier))
    text = write_markdown([row], tmp_path / "t.md", paper, {}, FinetuneConfig(), shorter_runs=record).read_text()
    assert "91.26 / 96.54 / 75.70 / 88.69" in text and "95.67 / 98.69 / 86.61 / 95.03" in text
    assert "not in the repository" in text  # the row's checkpoint folder does not exist
    allowed = {f"{x:.2f}" for x in (91.26, 96.54, 75.7, 88.69, 95.67, 98.69, 86.61, 95.03, 76.02, 0.31)}
    allowed |= {str(x) for x in (96.7, 98.4, 88.0, 96.5)}
    decimals = set(re.findall(r"\d+\.\d+", text))
    assert decimals <= allowed, decimals - allowed
    # without the record, no comparison is printed (and nothing is made up)
    plain = write_markdown([row], tmp_path / "p.md", paper, {}, FinetuneConfig(), shorter_runs=None).read_text()
    assert "Training length" not in plain
