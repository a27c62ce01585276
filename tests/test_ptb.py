"""The one-shot language task (section 4.1.3): L_rand, the word split, episodes, sentence encoders, the LM oracle."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from matchnet.language.encoder import KINDS, SentenceEncoder
from matchnet.language.episodes import build_pool, draw_episode, evaluation_episodes, SentenceEpisodeSampler
from matchnet.language.oracle import LMConfig, oracle_predictor, stream, train_lm
from matchnet.language.stats import Outcomes, bootstrap, query_outcomes, summary
from matchnet.language.train import SentenceConfig, evaluate
from matchnet.language.vocab import (BLANK_ID, EOS, PAD_ID, UNK, Vocabulary, exposure, held_out_words,
                                     load_ptb, parse_lrand, split_words)
from matchnet.episodes import Episodes
from matchnet.model import MatchingClassifier, MatchingNetwork

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PAPER = SHARED / "paper" / "matching-networks-vinyals-2016.md"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on a busy 2-core machine a second thread only adds waiting (30 s instead of 1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ptb(real_ptb_dir):  # conftest: ./data/ptb or ../shared/data/ptb; a skip fails under CI
    return load_ptb(real_ptb_dir)


@pytest.fixture(scope="module")
def words(ptb):
    return split_words(ptb.vocab, held_out_words())


def test_lrand_parser_on_a_hand_made_appendix(tmp_path):
    paper = tmp_path / "paper.md"
    paper.write_text("# A\n\ntext, not, words\n\n# **D** PTB Class Splits\n\nHere we define.\n\n$$L_{rand} =$$\n\n"
                     "'s, 12-year, alpha beta, gamma,\n\ndelta, 's, epsilon\n\n# References\n\nx, y\n")
    # Commas and whitespace both separate (a lost comma, a page break); a repeat is dropped; the list ends
    # at the next heading.
    assert parse_lrand(paper) == ["'s", "12-year", "alpha", "beta", "gamma", "delta", "epsilon"]
    paper.write_text("# Nothing here\n")
    with pytest.raises(ValueError, match="PTB Class Splits"):
        parse_lrand(paper)


def test_shipped_lrand_is_the_papers_list():
    lrand = held_out_words()
    if PAPER.is_file():  # the shipped list is exactly what the parser reads from the paper
        assert parse_lrand(PAPER) == lrand
    # The paper's text lists 983 entries; a repeated stretch and a lost stretch at a page break leave 968 distinct.
    assert 950 <= len(lrand) <= 1000 and len(set(lrand)) == len(lrand)
    assert lrand[:3] == ["'s", "12-year", "190.58-point"] and lrand[-1] == "zones"
    assert "contra" in lrand and "confirm" in lrand and "contra confirm" not in lrand  # the missing comma
    assert all(" " not in w and "," not in w for w in lrand)


def test_word_split_is_disjoint_and_holds_out_the_papers_words(ptb, words):
    train, valid, test = set(words.train), set(words.valid), set(words.test)
    assert len(test) == 1000 and len(valid) == 500 and not (train & test or train & valid or valid & test)
    assert words.report["matched"] >= 960  # all but a word cut at a page break
    vocab = ptb.vocab
    held = {vocab.words[i] for i in test}
    assert {"'s", "abortion", "zones", "burmah", "toronto-based"} <= held  # the last two: fixed misprints
    specials = {vocab.index[w] for w in ("<unk>", "<eos>", "<pad>", "<blank>")}
    assert not specials & (train | valid | test)
    assert len(train) + len(valid) + len(test) == len(vocab) - 4


def test_training_episodes_never_show_a_held_out_word(ptb, words):
    unk = ptb.vocab.index[UNK]
    held = words.held_out
    # Without hiding, training would read test words in context: every one of them is in ptb.train.txt.
    seen = exposure(ptb, words)
    assert seen["test_words_in_train_text"] == 1000 and seen["train_sentences_with_test_word"] == 32975
    pool = build_pool(ptb.train, words.train, min_sentences=7, hide=held, unk=unk)
    assert not set(pool.words) & held
    sampler = SentenceEpisodeSampler(pool, 5, [1, 2, 3], 4, seed=0)
    hidden_seen = 0
    for _ in range(50):
        ep = sampler.sample(4)
        tokens = set(torch.cat([ep.support.flatten(), ep.query.flatten()]).tolist())
        assert not tokens & held  # neither as a label nor anywhere in a sentence
        hidden_seen += int((ep.query == unk).sum())
    assert hidden_seen > 0  # the hiding did happen (78% of training sentences hold a held-out word)


def test_test_episodes_never_show_the_answer(ptb, words):
    """Every occurrence of the label is blanked (277 test pairs hold it twice or more); other held-out words are <unk>."""
    unk = ptb.vocab.index[UNK]
    pool = build_pool(ptb.test, words.test, min_sentences=7, hide=words.held_out, unk=unk)
    assert len(pool.words) == 156
    repeated = sum(1 for w in pool.words for s in pool.holders[w] if ptb.test[s].count(w) > 1)
    assert repeated == 277
    for ep in evaluation_episodes(pool, 5, 3, 4, episodes=200, seed=0):
        answers = ep.classes.gather(1, ep.query_labels)  # [E, Q] the label word of each query
        assert not (ep.query == answers.unsqueeze(-1)).any()
        assert not set(ep.query.flatten().tolist()) & words.held_out
        assert ((ep.query == BLANK_ID).sum(-1) >= 1).all()


def tiny_corpus() -> tuple[Vocabulary, list[list[int]]]:
    """Ten sentences; 'bank' and 'rate' share some sentences, and one sentence holds 'bank' twice."""
    text = [
        "the bank said the rate rose", "a bank and a rate", "the bank lent money", "bank shares fell",
        "the bank of the bank", "the rate fell", "a rate cut", "rate rises hurt", "the stock rate", "a bank rate",
    ]
    sentences = [s.split() for s in text]
    vocab = Vocabulary.from_sentences(sentences)
    return vocab, [vocab.encode(s) for s in sentences]


def unblank(blanked: list[int], original: list[int]) -> list[int]:
    """Positions where a blanked sentence differs from its source."""
    return [i for i, (a, b) in enumerate(zip(blanked, original)) if a != b]


def test_episodes_blank_every_occurrence_and_never_reuse_a_sentence():
    vocab, sentences = tiny_corpus()
    bank, rate = vocab.index["bank"], vocab.index["rate"]
    pool = build_pool(sentences, [bank, rate], min_sentences=3)
    assert pool.words == sorted([bank, rate])
    rng = random.Random(0)
    seen_twice = False
    for _ in range(300):
        ep = draw_episode(pool, way=2, shot=2, query=2, rng=rng)
        ids = ep.support_ids + ep.query_ids
        assert len(set(ids)) == len(ids)  # no sentence twice, so support and query never overlap
        blanked = ep.support + ep.query
        owners = [w for w in ep.words for _ in range(2)] * 2  # 2 support, then 2 query sentences per word
        for sentence, sid, word in zip(blanked, ids, owners):
            changed = unblank(sentence, sentences[sid])
            # exactly the label word's occurrences are blanked, and nothing else changed
            assert changed == [i for i, t in enumerate(sentences[sid]) if t == word]
            assert all(sentence[i] == BLANK_ID for i in changed) and word not in sentence
        if 4 in ids:  # "the bank of the bank": both occurrences go
            s = blanked[ids.index(4)]
            assert s.count(bank) == 0 and s.count(BLANK_ID) == 2
            seen_twice = True
    assert seen_twice


def test_hidden_words_become_unk_and_change_no_draw():
    vocab, sentences = tiny_corpus()
    bank, rate, the = vocab.index["bank"], vocab.index["rate"], vocab.index["the"]
    unk = len(vocab)  # any id outside the sentences
    plain = build_pool(sentences, [bank, rate], min_sentences=3)
    hidden = build_pool(sentences, [bank, rate], min_sentences=3, hide={bank, rate, the}, unk=unk)
    for seed in range(20):
        a = draw_episode(plain, 2, 2, 2, random.Random(seed))
        b = draw_episode(hidden, 2, 2, 2, random.Random(seed))
        assert a.support_ids == b.support_ids and a.query_ids == b.query_ids
        for x, y, word in zip(a.support + a.query, b.support + b.query, [w for w in a.words for _ in range(2)] * 2):
            assert y.count(BLANK_ID) == x.count(BLANK_ID) >= 1  # the label is blanked, not hidden
            other = ({bank, rate} - {word}) | {the}
            assert not set(y) & other and y.count(unk) == sum(x.count(t) for t in other)
    with pytest.raises(ValueError, match="unk"):
        build_pool(sentences, [bank], min_sentences=3, hide={the})


def test_words_with_too_few_sentences_are_not_used():
    vocab, sentences = tiny_corpus()
    money = vocab.index["money"]  # in one sentence only
    pool = build_pool(sentences, [vocab.index["bank"], money], min_sentences=2)
    assert money not in pool.words
    with pytest.raises(ValueError):
        draw_episode(pool, way=2, shot=1, query=1, rng=random.Random(0))


def test_evaluation_episodes_are_reproducible_and_padded():
    vocab, sentences = tiny_corpus()
    pool = build_pool(sentences, [vocab.index["bank"], vocab.index["rate"]], min_sentences=3)
    a = list(evaluation_episodes(pool, 2, 1, 2, episodes=6, seed=3, batch=4))
    b = list(evaluation_episodes(pool, 2, 1, 2, episodes=6, seed=3, batch=4))
    assert [x.query.shape[0] for x in a] == [4, 2]
    for x, y in zip(a, b):
        assert torch.equal(x.support, y.support) and torch.equal(x.query, y.query)
        assert x.support.shape[:2] == (x.support.shape[0], 2) and x.query_labels.tolist()[0] == [0, 0, 1, 1]
        assert ((x.query == BLANK_ID).sum(-1) >= 1).all()


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_ignores_padding(kind):
    torch.manual_seed(0)
    enc = SentenceEncoder(50, kind, embed_dim=16, hidden=8, layers=2, dropout=0.3).eval()
    lengths = [3, 7, 5, 1]
    sentences = [torch.randint(2, 50, (n,)) for n in lengths]
    for s in sentences:
        s[len(s) // 2] = BLANK_ID
    with torch.no_grad():
        alone = torch.cat([enc(s.unsqueeze(0)) for s in sentences])
        batch = torch.full((len(sentences), 12), PAD_ID)
        for i, s in enumerate(sentences):
            batch[i, : len(s)] = s
        padded = enc(batch)
    assert padded.shape == (4, enc.out_dim)
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    if kind != "bow":  # the context matters: another word changes the vector
        other = batch.clone()
        other[1, 0] = 3 if other[1, 0] != 3 else 4
        with torch.no_grad():
            assert not torch.allclose(enc(other)[1], padded[1])


@pytest.mark.parametrize("kind", ["bilstm", "bilstm-blank"])
def test_bidirectional_encoder_equals_torchs_packed_bilstm(kind):
    """The padded, reversed-in-place LSTMs compute what nn.LSTM(bidirectional) computes on packed sequences."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(1)
    enc = SentenceEncoder(30, kind, embed_dim=6, hidden=5, layers=2).eval()
    ref = torch.nn.LSTM(6, 5, 2, batch_first=True, bidirectional=True)
    for layer in range(2):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l{layer}").data.copy_(getattr(enc.forward_lstms[layer], f"{name}_l0"))
            getattr(ref, f"{name}_l{layer}_reverse").data.copy_(getattr(enc.backward_lstms[layer], f"{name}_l0"))
    tokens = torch.full((3, 8), PAD_ID)
    for i, n in enumerate([8, 3, 5]):
        tokens[i, :n] = torch.randint(2, 30, (n,))
        tokens[i, n // 2] = BLANK_ID
    lengths = (tokens != PAD_ID).sum(1)
    with torch.no_grad():
        out, (h, _) = ref(pack_padded_sequence(enc.embedding(tokens), lengths, batch_first=True, enforce_sorted=False))
        out, _ = pad_packed_sequence(out, batch_first=True)
        want = torch.cat([h[-2], h[-1]], -1) if kind == "bilstm" else out[torch.arange(3), lengths // 2]
        torch.testing.assert_close(enc(tokens), want, rtol=1e-5, atol=1e-6)


def test_sentence_matching_network_is_the_image_models_classifier():
    cfg = SentenceConfig(encoder="bilstm-blank", embed_dim=16, hidden=8, fce=True)
    model = cfg.model(40).eval()
    assert isinstance(model, MatchingClassifier) and issubclass(MatchingNetwork, MatchingClassifier)
    support = torch.randint(2, 40, (2, 5, 9))
    query = torch.randint(2, 40, (2, 10, 9))
    support[..., 4] = BLANK_ID
    query[..., 2] = BLANK_ID
    labels = torch.arange(5).expand(2, 5)
    with torch.no_grad():
        log_probs, attention = model(support, labels, query, 5)
        s = model.embed_support(support, labels, 5)
        lp2, _ = model.classify(s, query)
    assert log_probs.shape == (2, 10, 5) and attention.shape == (2, 10, 5)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 10))
    torch.testing.assert_close(lp2, log_probs)


def test_oracle_fills_the_blank_with_the_word_the_corpus_makes_certain(tmp_path):
    text = ["the cat sat on the mat", "a dog ran in the park", "my bank lent money", "her car is red"] * 12
    sentences = [s.split() for s in text]
    vocab = Vocabulary.from_sentences(sentences)
    ids = [vocab.encode(s) for s in sentences]
    eos = vocab.index[EOS]
    cfg = LMConfig(hidden=32, layers=1, batch=4, bptt=10, epochs=10, decay_after=8, lr=0.5, seed=0)
    lm = train_lm(cfg, len(vocab), stream(ids, eos), stream(ids[:8], eos), tmp_path / "lm", progress=False)
    assert (tmp_path / "lm" / "model.safetensors").is_file()

    def blanked(words: str, at: int) -> list[int]:
        out = vocab.encode(words.split())
        out[at] = BLANK_ID
        return out

    queries = [blanked("the cat sat on the mat", 1), blanked("a dog ran in the park", 1),
               blanked("my bank lent money", 1), blanked("her car is red", 1)]
    width = max(map(len, queries))
    query = torch.full((1, 4, width), PAD_ID)
    for i, q in enumerate(queries):
        query[0, i, : len(q)] = torch.tensor(q)
    candidates = [vocab.index[w] for w in ("cat", "dog", "bank", "car")]
    ep = Episodes(support=query[:, :0], support_labels=torch.zeros(1, 0, dtype=torch.long), query=query,
                  query_labels=torch.arange(4).unsqueeze(0), classes=torch.tensor([candidates]), n_way=4)
    log_probs = oracle_predictor(lm, eos)(ep)
    assert log_probs.argmax(-1).tolist() == [[0, 1, 2, 3]]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(1, 4))
    # scoring from the blank on only (the oracle's shortcut) gives the same posterior as whole sentences
    full = torch.stack([lm.sentence_log_likelihood([[w if t == BLANK_ID else t for t in q] for w in candidates], eos)
                        for q in queries])
    torch.testing.assert_close(log_probs[0], torch.log_softmax(full, -1), rtol=1e-4, atol=1e-4)
    # batch scoring agrees with one sentence at a time (padding and length sorting change nothing)
    together = lm.sentence_log_likelihood(ids[:4], eos)
    alone = torch.cat([lm.sentence_log_likelihood([s], eos) for s in ids[:4]])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-4)


def test_every_ptb_config_parses():
    configs = sorted((Path(__file__).resolve().parents[1] / "train" / "configs").glob("ptb_*.toml"))
    assert len(configs) >= 5
    for path in configs:
        cfg = SentenceConfig.from_toml(path)
        assert cfg.name.startswith("ptb-") and cfg.encoder in KINDS
    with pytest.raises(ValueError, match="unknown option"):
        SentenceConfig.from_toml(configs[0], encodr="lstm")


def test_word_bootstrap_sees_the_word_sample_the_episode_interval_misses():
    """Word A is always right, word B always wrong, both in every episode: every episode scores 50%."""
    correct = torch.tensor([[True, True, False, False]]).repeat(500, 1)
    words = torch.tensor([[7, 7, 9, 9]]).repeat(500, 1)
    out = Outcomes(correct, words)
    assert out.mean == 50.0
    lo, hi = bootstrap(out, "episodes", replicates=400)
    assert lo == hi == 50.0  # no spread over episodes at all
    lo, hi = bootstrap(out, "words", replicates=400)
    assert lo == 0.0 and hi == 100.0  # two words: a resample is {A, A}, {A, B} or {B, B}
    cell = summary(out, replicates=400)
    assert cell["ci95"] == 0.0 and cell["words"] == 2 and cell["boot_both"] == [0.0, 100.0]
    with pytest.raises(ValueError, match="bootstrap over"):
        bootstrap(out, "sentences")


def test_query_outcomes_agree_with_evaluate():
    vocab, sentences = tiny_corpus()
    pool = build_pool(sentences, [vocab.index["bank"], vocab.index["rate"]], min_sentences=3)
    torch.manual_seed(0)
    model = SentenceConfig(encoder="bilstm-blank", embed_dim=8, hidden=4).model(len(vocab))
    out = query_outcomes(model, pool, 2, 1, 2, episodes=30, seed=5, batch=7)
    acc = evaluate(model, pool, 2, 1, 2, episodes=30, seed=5, batch=7, progress=False)
    assert out.correct.shape == (30, 4) and abs(out.mean - acc.mean) < 1e-9
    # label i of an episode is its i-th word: queries come class by class
    ep = next(evaluation_episodes(pool, 2, 1, 2, episodes=1, seed=5))
    assert out.words[0].tolist() == [ep.classes[0, 0].item()] * 2 + [ep.classes[0, 1].item()] * 2


def test_table_headline_is_the_row_best_on_validation_not_on_test():
    import sys
    sys.path.insert(0, str(REPO / "train"))
    import table_ptb

    def cell(mean):
        return {"mean": mean, "ci95": 1.0, "words": 156, "boot_episodes": [mean - 1, mean + 1], "boot_words": [mean - 3, mean + 3],
                "boot_both": [mean - 3.2, mean + 3.2]}

    def record(config, val, test):
        return {"config": config, "label": config.upper(), "settings": {"fce": False, "val_episodes": 500},
                "training": {"best_val": val, "steps": 10, "seconds": 60, "hardware": "CPU"},
                "test": {"episodes": 1000, "seed": 0, "query": 4, "hardware": "CPU",
                         **{f"k{k}": cell(test) for k in (1, 2, 3)}}}

    rows = [record("ptb_a", val=40.0, test=60.0), record("ptb_b", val=45.0, test=50.0)]
    text = table_ptb.render({}, rows, None, ["ptb_c"])
    head = next(line for line in text.splitlines() if "selected on validation" in line and line.startswith("|"))
    assert "PTB_B" in head and "50.00 ± 1.00" in head and "± 3.20 (words ± 3.00)" in head
    assert "Matching Nets (ablation) | PTB_A" in text
    assert "`ptb_c.toml`" in text and "Oracle LSTM-LM | not measured here" in text
    assert "the word sample is 90% / 90% / 90% of the variance" in text  # 3² / (3² + 1²)
