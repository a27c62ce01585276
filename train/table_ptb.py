"""`python train/run.py table ptb`: the one-shot language task of section 4.1.3, written to docs/results/ptb.md.

Trains what is missing (resumable: finished pieces in runs/ptb/ are reused), evaluates every model on the same
seeded test episodes, and writes one raw record per row to docs/bench/ptb/<config>.json (oracle_lm.json for the
LSTM-LM, data.json for the word split). docs/results/ptb.md is generated from those records only, so it can be
rebuilt without runs/ (`python train/table_ptb.py --render`).

  python train/run.py table ptb [--device cpu] [--data-root data] [--episodes 1000] [--seed 0]
  python train/table_ptb.py --only ptb_lstm_long --only oracle     # some rows only, then re-render
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script too

from matchnet.atomic import write_text  # noqa: E402
from matchnet.language.episodes import SentencePool, build_pool  # noqa: E402
from matchnet.language.oracle import LMConfig, load_lm, oracle_predictor, perplexity, stream, train_lm  # noqa: E402
from matchnet.language.stats import half_width, query_outcomes, summary, word_share  # noqa: E402
from matchnet.language.train import SentenceConfig, load, train  # noqa: E402
from matchnet.language.vocab import EOS, PTB, UNK, WordSplit, exposure, find_ptb, held_out_words, load_ptb, split_words  # noqa: E402
from matchnet.train import resolve_device  # noqa: E402

SHARED = ROOT.parent / "shared"  # where this project's data and paper live beside the checkout
RUNS = ROOT / "runs" / "ptb"
RECORDS = ROOT / "docs" / "bench" / "ptb"
OUT = ROOT / "docs" / "results" / "ptb.md"
# Bumped when the episodes or the word hiding change: a record of another protocol is never rendered as current.
# 1: one occurrence blanked, held-out words visible in training text.  2: every occurrence blanked, test and
# validation words shown as <unk> everywhere a Matching Network reads (episodes.py).
PROTOCOL = 2
# The Matching Nets rows, in training order (most wanted first): (config, label). The headline is not fixed here:
# it is the measured row with the best validation accuracy.
MODELS = [
    ("ptb_bilstm_blank_fce_long", "BiLSTM read at the blank + FCE, 4,000 steps"),
    ("ptb_lstm_long", "LSTM, final state (the simple encoder), 4,000 steps"),
    ("ptb_bow", "mean of word embeddings"),
    ("ptb_bow_scale30", "mean of word embeddings, softmax scale fixed at 30"),
    ("ptb_bilstm_blank_long", "BiLSTM read at the blank, 4,000 steps"),
    ("ptb_lstm", "LSTM, final state (the simple encoder)"),
    ("ptb_bilstm_blank", "BiLSTM read at the blank"),
    ("ptb_bilstm", "BiLSTM, final states"),
    ("ptb_bilstm_blank_fce", "BiLSTM read at the blank + FCE"),
    ("ptb_bilstm_blank_dropout", "BiLSTM read at the blank, dropout 0.3"),
    ("ptb_bilstm_blank_20way", "BiLSTM read at the blank, trained 20-way"),
    ("ptb_bilstm_blank_fce_20way", "BiLSTM read at the blank + FCE, trained 20-way"),
]
SHOTS = (1, 2, 3)
WAY, QUERY = 5, 4  # 5-way; 4 queries per word = the paper's batch of 20
MIN_SENTENCES = max(SHOTS) + QUERY  # one word pool for every column: k = 3 support + 4 query sentences
# Zaremba et al.'s small LM, shortened to fit a shared 2-core CPU: the full-rate epochs and the halvings of the
# 13-epoch schedule are cut to 3 + 3 (LMConfig() is the full recipe).
ORACLE_LM = LMConfig(epochs=6, decay_after=3)
PAPER_MN = (32.4, 36.1, 38.2)
PAPER_ORACLE = 72.8


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def data(data_root: str) -> tuple[PTB, WordSplit, dict[str, SentencePool]]:
    """The pools a Matching Network reads (held-out words hidden) and the oracle's test pool (nothing hidden)."""
    ptb = load_ptb(find_ptb(data_root, SHARED / "data"))
    split = split_words(ptb.vocab, held_out_words())
    hide = {"hide": split.held_out, "unk": ptb.vocab.index[UNK]}
    pools = {
        "train": build_pool(ptb.train, split.train, MIN_SENTENCES, **hide),
        "valid": build_pool(ptb.valid, split.valid, MIN_SENTENCES, **hide),
        "test": build_pool(ptb.test, split.test, MIN_SENTENCES, **hide),
    }
    pools["oracle_test"] = replace(pools["test"], hide=frozenset(), unk=None)  # same draws, real words
    return ptb, split, pools


def write_json(path: Path, value: dict) -> None:
    """Write through matchnet.atomic, so a reader (another row's process) never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(value, indent=2) + "\n")


def data_record(ptb: PTB, split: WordSplit, pools: dict[str, SentencePool]) -> dict:
    test = pools["test"]
    pairs = [(w, s) for w in test.words for s in test.holders[w]]
    return {
        "protocol": PROTOCOL, "split": split.report, "exposure": exposure(ptb, split),
        "usable_words": {k: len(pools[k].words) for k in ("train", "valid", "test")},
        "min_sentences": MIN_SENTENCES, "sentences": {k: len(ptb.part(k)) for k in ("train", "valid", "test")},
        "test_pairs": len(pairs),
        "test_pairs_with_repeated_label": sum(1 for w, s in pairs if test.sentences[s].count(w) > 1),
    }


def test_cells(predict, pool: SentencePool, episodes: int, seed: int, device, hw: str) -> dict:
    """k = 1, 2, 3 on the test pool (column i uses seed + 1000 i, as matchnet.evaluate.evaluate_table)."""
    t = time.perf_counter()
    cells = {f"k{k}": summary(query_outcomes(predict, pool, WAY, k, QUERY, episodes, seed + 1000 * i,
                                             device=device))
             for i, k in enumerate(SHOTS)}
    return {"episodes": episodes, "seed": seed, "way": WAY, "query": QUERY, **cells,
            "eval_seconds": round(time.perf_counter() - t, 1), "hardware": hw}


def run_model(name: str, label: str, ptb: PTB, pools: dict, args, device) -> dict:
    cfg = SentenceConfig.from_toml(ROOT / "train" / "configs" / f"{name}.toml")
    run_dir = RUNS / cfg.name
    if not (run_dir / "final" / "model.safetensors").is_file():
        print(f"training {cfg.name}", flush=True)
        result = train(cfg, len(ptb.vocab), pools["train"], pools["valid"], run_dir, device)
        write_json(run_dir / "summary.json", {**result, "hardware": hardware(device)})
    training = json.loads((run_dir / "summary.json").read_text())
    model, _ = load(run_dir / "best")
    model.to(device)
    cached = run_dir / f"test_{args.episodes}ep_seed{args.seed}.json"
    if not cached.is_file():
        write_json(cached, test_cells(model, pools["test"], args.episodes, args.seed, device, hardware(device)))
    log = run_dir / "log.jsonl"
    record = {
        "protocol": PROTOCOL, "config": name, "label": label, "settings": asdict(cfg),
        "params": sum(p.numel() for p in model.parameters()), "training": training,
        "validation_log": [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else [],
        "test": json.loads(cached.read_text()),
        "command": f"python train/table_ptb.py --only {name} --episodes {args.episodes} --seed {args.seed}",
    }
    write_json(RECORDS / f"{name}.json", record)
    print(label, {k: round(record["test"][k]["mean"], 2) for k in ("k1", "k2", "k3")}, flush=True)
    return record


def run_oracle(ptb: PTB, pools: dict, args, device) -> dict:
    """Train the LM on all of ptb.train.txt if runs/ptb/oracle-lm has none (resumes at an epoch), then test it."""
    folder = RUNS / "oracle-lm"
    eos = ptb.vocab.index[EOS]
    if not (folder / "model.safetensors").is_file():
        train_lm(ORACLE_LM, len(ptb.vocab), stream(ptb.train, eos), stream(ptb.valid, eos), folder, device)
    lm, cfg = load_lm(folder, device)
    ppl = folder / "perplexity.json"
    if not ppl.is_file():
        write_json(ppl, {"valid": perplexity(lm, stream(ptb.valid, eos)), "test": perplexity(lm, stream(ptb.test, eos))})
    cached = folder / f"test_{args.episodes}ep_seed{args.seed}.json"
    if not cached.is_file():
        write_json(cached, test_cells(oracle_predictor(lm, eos), pools["oracle_test"], args.episodes, args.seed,
                                      device, hardware(device)))
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    record = {
        "protocol": PROTOCOL, "config": "oracle_lm", "settings": asdict(cfg), "training_text": "all of ptb.train.txt",
        "perplexity": json.loads(ppl.read_text()), "epoch_log": log, "train_seconds": round(sum(r["seconds"] for r in log)),
        "test": json.loads(cached.read_text()),
        "command": f"python train/table_ptb.py --only oracle --episodes {args.episodes} --seed {args.seed}",
    }
    write_json(RECORDS / "oracle_lm.json", record)
    print("oracle", {k: round(record["test"][k]["mean"], 2) for k in ("k1", "k2", "k3")}, flush=True)
    return record


def main(args) -> None:
    device = resolve_device(args.device)
    only = set(getattr(args, "only", None) or [])
    unknown = only - {name for name, _ in MODELS} - {"oracle"}
    if unknown:
        raise ValueError(f"--only: unknown row(s) {sorted(unknown)}; rows: {[n for n, _ in MODELS] + ['oracle']}")
    ptb, split, pools = data(args.data_root)
    write_json(RECORDS / "data.json", data_record(ptb, split, pools))
    print(f"usable words (>= {MIN_SENTENCES} sentences): " + ", ".join(
        f"{k} {len(pools[k].words)}" for k in ("train", "valid", "test")), flush=True)
    for name, label in MODELS:
        if not only or name in only:
            run_model(name, label, ptb, pools, args, device)
    if not only or "oracle" in only:
        run_oracle(ptb, pools, args, device)
    render_records()


# -- docs/results/ptb.md, from docs/bench/ptb/*.json only ------------------------------------------------------

def load_records() -> tuple[dict, list[dict], dict | None, list[str]]:
    """The data record, the measured rows (current protocol, in MODELS order), the oracle, the rows not measured."""
    def read(name: str) -> dict | None:
        path = RECORDS / f"{name}.json"
        rec = json.loads(path.read_text()) if path.is_file() else None
        return rec if rec is not None and rec.get("protocol") == PROTOCOL else None

    rows, missing = [], []
    for name, _ in MODELS:
        rec = read(name)
        (rows.append(rec) if rec else missing.append(name))
    return read("data") or {}, rows, read("oracle_lm"), missing


def cell(c: dict) -> str:
    return f"{c['mean']:.2f} ± {c['ci95']:.2f}"


def boot(c: dict) -> str:
    return f"± {half_width(c['boot_both']):.2f} (words ± {half_width(c['boot_words']):.2f})"


def render_records() -> Path:
    info, rows, oracle, missing = load_records()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_text(OUT, render(info, rows, oracle, missing))
    print(f"wrote {OUT}")
    return OUT


def render(info: dict, rows: list[dict], oracle: dict | None, missing: list[str]) -> str:
    lines = ["## One-shot language modelling (Penn Treebank, section 4.1.3)", "",
             "Generated by `python train/run.py table ptb` (train/table_ptb.py) from the records in "
             "`docs/bench/ptb/`; do not edit by hand. The discussion is hand-written, in the next section "
             "(docs/results/ptb_notes.md)."]
    measured_rows = rows + ([oracle] if oracle else [])
    if measured_rows:
        test = measured_rows[0]["test"]
        hw = " and ".join(sorted({r["test"]["hardware"] for r in measured_rows}))
        how = (f"{test['episodes']:,} test episodes per column ({WAY * test['query']} queries each), seed "
               f"{test['seed']} (column k uses seed {test['seed']} + 1000·(k−1)), evaluated on {hw}")
    else:
        how = "test episodes (no row measured under the current protocol yet)"
    lines += [
        "", f"5-way: a query sentence with its word blanked out (every occurrence), matched to a support set of "
        f"k blanked sentences per candidate word. Accuracy in % ± the half-width of the 95% interval over {how}. "
        "The second line of each row is the 95% bootstrap over test words and episodes together, and (in "
        f"brackets) over the {info.get('usable_words', {}).get('test', '?')} usable test words alone "
        "(`matchnet/language/stats.py`).",
        "", "| model | encoder f' = g' (record) | FCE | val 5w1s | k = 1 | k = 2 | k = 3 |",
        "|---|---|---|---:|---:|---:|---:|"]
    head = max(rows, key=lambda r: r["training"]["best_val"]) if rows else None
    ordered = ([head] if head else []) + [r for r in rows if r is not head]
    for r in ordered:
        t = r["test"]
        what = "**Matching Nets, selected on validation**" if r is head else "Matching Nets (ablation)"
        lines.append(f"| {what} | {r['label']} (`docs/bench/ptb/{r['config']}.json`) | "
                     f"{'yes' if r['settings']['fce'] else 'no'} | {r['training']['best_val']:.1f} | "
                     + " | ".join(f"{cell(t[f'k{k}'])}<br>{boot(t[f'k{k}'])}" for k in SHOTS) + " |")
    if oracle:
        t = oracle["test"]
        lines.append("| Oracle LSTM-LM (trained on all words; `docs/bench/ptb/oracle_lm.json`) | – | – | – | "
                     + " | ".join(f"{cell(t[f'k{k}'])}<br>{boot(t[f'k{k}'])}" for k in SHOTS) + " |")
    else:
        lines.append("| Oracle LSTM-LM | not measured here under the current protocol | – | – | – | – | – |")
    lines += ["| chance | – | – | 20 | 20 | 20 | 20 |",
              "| *Matching Nets (paper)* | *\"a simple encoding model\"* | *?* | – | "
              + " | ".join(f"*{n}*" for n in PAPER_MN) + " |",
              f"| *Oracle LSTM-LM (paper)* | – | – | – | *{PAPER_ORACLE}* | *{PAPER_ORACLE}* | *{PAPER_ORACLE}* |"]
    if head is not None:
        lines += ["", f"The headline row is the measured model with the best validation accuracy (\"val 5w1s\": "
                  f"5-way 1-shot, {head['settings']['val_episodes']} episodes of validation words in ptb.valid.txt, "
                  "best checkpoint of the run); the test set chose nothing. The other rows are ablations."]
        t = head["test"]
        shares = [word_share(t[f"k{k}"]) for k in SHOTS]
        text = (f"How much of the uncertainty is the word sample: for the headline, the bootstrap over the "
                f"{t['k1']['words']} test words alone gives ± "
                + " / ".join(f"{half_width(t[f'k{k}']['boot_words']):.2f}" for k in SHOTS)
                + " (k = 1 / 2 / 3), over episodes alone ± "
                + " / ".join(f"{half_width(t[f'k{k}']['boot_episodes']):.2f}" for k in SHOTS)
                + ": the word sample is " + " / ".join(f"{100 * x:.0f}%" for x in shares) + " of the variance.")
        if all(x > 0.5 for x in shares):
            text += (" Another draw of test words would move the number more than another draw of episodes, so the "
                     "interval to read is the joint one (second line), not the first.")
        lines += ["", text]
    if missing:
        lines += ["", "Not measured here under the current protocol (configs kept, no record): "
                  + ", ".join(f"`{m}.toml`" for m in missing) + "."]
    lines += ["", "How these were measured:", ""] + measured(info, rows, oracle)
    return "\n".join(lines) + "\n"


def measured(info: dict, rows: list[dict], oracle: dict | None) -> list[str]:
    rep, ex = info.get("split", {}), info.get("exposure", {})
    out = []
    if rep:
        out.append(
            "- Words: the paper's held-out list (appendix D, L_rand, shipped as `matchnet/language/lrand.json`) "
            f"gives {rep['lrand_listed']} distinct words, {rep['matched']} of which match the PTB vocabulary "
            f"({len(rep['corrected'])} after fixing a misprint: "
            + ", ".join(f"{k} → {v}" for k, v in rep["corrected"].items())
            + f"; unmatched: {', '.join(rep['unmatched']) or 'none'}); {rep['filled_at_random']} more vocabulary "
            f"words drawn with seed {rep['fill_seed']} make {rep['test_words']:,} test words. `<unk>` and `<eos>` "
            f"are never labels. Of the other words, {rep['valid_words']} (seeded) are validation words, for model "
            f"selection on ptb.valid.txt, and {rep['train_words']:,} are training words.")
    if ex:
        out.append(
            f"- Unseen words: all {ex['test_words_in_train_text']:,} test words occur in ptb.train.txt, and "
            f"{ex['train_sentences_with_test_word']:,} of its {ex['train_sentences']:,} sentences hold one "
            f"({ex['train_sentences_with_held_out_word']:,} hold a test or validation word). Every test and "
            f"validation word is shown to the Matching Networks as `<unk>` ({ex['train_tokens_hidden']:,} of "
            f"{ex['train_tokens']:,} training tokens), in training, validation and test sentences alike, except "
            "where it is the blanked label; dropping those sentences instead would have left "
            f"{ex['train_sentences_without_held_out']:,} training sentences. So the models never read a test word: "
            "its embedding is never trained.")
    if info:
        out.append(
            f"- Episodes: a word is usable in a part if at least {info['min_sentences']} of its sentences hold it "
            "(3 support + 4 queries, the same pool for every k): "
            + ", ".join(f"{n:,} {k}" for k, n in info["usable_words"].items())
            + " words. Test episodes use ptb.test.txt and test words only; training episodes ptb.train.txt and "
            "training words only. No sentence is used twice in an episode. Every occurrence of the label word is "
            f"blanked: {info['test_pairs_with_repeated_label']} of the {info['test_pairs']:,} test (word, sentence) "
            "pairs hold the word more than once, and blanking one occurrence only would have left the answer "
            "visible in them.")
    if rows:
        out.append(
            "- Matching Nets: `matchnet.model.MatchingClassifier` (eq. 1's softmax over cosines times a scale "
            "learned from 10, except the scale-30 row; FCE as in appendix A) over "
            "`matchnet.language.encoder.SentenceEncoder`. Trained on 5-way episodes with k drawn from {1, 2, 3} "
            "per step and 4 queries per word, 8 episodes per step, Adam lr 1e-3 with warm-up and cosine decay; "
            "the checkpoint with the best validation accuracy is tested. Training: "
            + ", ".join(f"`{r['config']}` {r['training']['steps']:,} steps in {r['training']['seconds'] / 60:.1f} "
                        f"min on {r['training'].get('hardware', '?')}" for r in rows)
            + " (wall time, on a machine shared with other jobs).")
    if oracle:
        c, p = oracle["settings"], oracle["perplexity"]
        out.append(
            f"- Oracle: a {c['layers']}-layer, {c['hidden']}-unit LSTM language model (Zaremba et al. 2014, small: "
            f"{c['bptt']}-step BPTT, batch {c['batch']}, SGD lr {c['lr']} halved every epoch after epoch "
            f"{c['decay_after']}, gradient norm clipped at {c['clip']}, no dropout), trained for "
            f"{len(oracle['epoch_log'])} epoch(s) on all of ptb.train.txt, test words included, as the paper's oracle \"trained on all the "
            f"words\" ({oracle['train_seconds'] / 60:.0f} min; their schedule is 13 epochs: shortened to fit a "
            f"shared CPU, ORACLE_LM in train/table_ptb.py). Perplexity {p['valid']:.1f} on ptb.valid.txt and "
            f"{p['test']:.1f} on ptb.test.txt (Zaremba et al.: 120.7 / 114.5). It reads the same test episodes "
            "with the held-out words as they are (not `<unk>`), fills the blanks with each of the 5 words, scores each "
            "filled sentence and picks the most likely; it ignores the support set, so it is an upper bound.")
    out.append("- Numbers in *italics* are the paper's (section 4.1.3), quoted, not measured here. The paper does "
               "not describe its encoder, its word split beyond the list, or how many test episodes it used.")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--data-root", default="data", help="folder holding ptb/")
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes per cell (at least 1000 for docs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", default=[], metavar="CONFIG",
                        help="a row's config name (ptb_lstm_long), or 'oracle'; repeatable")
    parser.add_argument("--render", action="store_true", help="only rewrite docs/results/ptb.md from the records")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    render_records() if a.render else main(a)
