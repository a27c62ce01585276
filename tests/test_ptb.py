"""The one-shot language task (section 4.1.3): L_rand, the word split, episodes, sentence encoders, the LM oracle."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from matchnet.language.encoder import KINDS, SentenceEncoder
from matchnet.language.episodes import build_pool, draw_episode, evaluation_episodes, SentenceEpisodeSampler
from matchnet.language.oracle import LMConfig, oracle_predictor, stream, train_lm
from matchnet.language.train import SentenceConfig
from matchnet.language.vocab import (BLANK_ID, EOS, PAD_ID, Vocabulary, held_out_words, load_ptb, parse_lrand,
                                     split_words)
from matchnet.episodes import Episodes
from matchnet.model import MatchingClassifier, MatchingNetwork

SHARED = Path(__file__).resolve().parents[2] / "shared"
PAPER = SHARED / "paper" / "matching-networks-vinyals-2016.md"
PTB_DIR = SHARED / "data" / "ptb"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on a busy 2-core machine a second thread only adds waiting (30 s instead of 1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ptb():
    if not PTB_DIR.is_dir():
        pytest.skip("the real Penn Treebank (../shared/data/ptb) is not on this machine")
    return load_ptb(PTB_DIR)


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


def test_training_episodes_never_use_a_held_out_word(ptb, words):
    pool = build_pool(ptb.train, words.train, min_sentences=7)
    assert not set(pool.words) & set(words.test) and not set(pool.words) & set(words.valid)
    sampler = SentenceEpisodeSampler(pool, 5, [1, 2, 3], 4, seed=0)
    for _ in range(50):
        ep = sampler.sample(4)
        assert not set(ep.classes.flatten().tolist()) & set(words.test)


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


def test_episodes_blank_one_occurrence_and_never_reuse_a_sentence():
    vocab, sentences = tiny_corpus()
    bank, rate = vocab.index["bank"], vocab.index["rate"]
    pool = build_pool(sentences, [bank, rate], min_sentences=3)
    assert pool.words == sorted([bank, rate])
    rng = random.Random(0)
    for _ in range(300):
        ep = draw_episode(pool, way=2, shot=2, query=2, rng=rng)
        ids = ep.support_ids + ep.query_ids
        assert len(set(ids)) == len(ids)  # no sentence twice, so support and query never overlap
        blanked = ep.support + ep.query
        owners = [w for w in ep.words for _ in range(2)] * 2  # 2 support, then 2 query sentences per word
        for sentence, sid, word in zip(blanked, ids, owners):
            assert sentence.count(BLANK_ID) == 1
            changed = unblank(sentence, sentences[sid])
            assert len(changed) == 1 and sentences[sid][changed[0]] == word  # the label word, blanked once
        if 4 in ids:  # "the bank of the bank": the other occurrence stays
            s = blanked[ids.index(4)]
            assert s.count(bank) == 1 and s.count(BLANK_ID) == 1


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
        assert ((x.query == BLANK_ID).sum(-1) == 1).all()


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
