"""docs/results/omniglot_table.md and its figure, generated from the rows `train/run.py table omniglot` measured.

A row is a dict: row (key), model, matching, finetune, accuracy {"5w1s": {"mean", "ci95"}, ...}, episodes,
seed, hardware, seconds, command, checkpoint, and for fine-tuned rows `chosen` (the settings picked on val).
Paper numbers are passed in and always printed in brackets, in italics, beside ours: never as ours.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_text

REPO = Path(__file__).resolve().parents[2]
COLUMN_NAMES = {"5w1s": "5-way 1-shot", "5w5s": "5-way 5-shot", "20w1s": "20-way 1-shot", "20w5s": "20-way 5-shot"}

# The hand-written notes on these rows (how each is built, why it differs from the paper) live in
# docs/results/omniglot_table_notes.md, which docs/RESULTS.md includes right after this generated section:
# everything this module writes is computed from the measured rows and the records named beside it.
NOTES_FILE = "docs/results/omniglot_table_notes.md"
# Earlier, shorter training runs of the siamese net and the MANN (extracted from git history): the raw record
# of the training-length comparison.
SHORTER_RUNS = Path(__file__).resolve().parents[2] / "docs" / "bench" / "baselines_shorter_runs.json"


def _cell(acc: dict | None, paper: float | None) -> str:
    ours = f"{acc['mean']:.2f} ± {acc['ci95']:.2f}" if acc else "not measured"
    return ours if paper is None else f"{ours} *({paper})*"




def _shown(path: str) -> str:
    """A checkpoint path as the reader of the repo should see it: relative to the checkout when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def _checkpoint_folder(checkpoint: str) -> Path:
    folder = Path(checkpoint)
    return folder if folder.is_absolute() or folder.exists() else REPO / folder


def _training_record(row: dict) -> dict | None:
    """How the row's model was trained: the row's own `trained` record, else the training.json beside its
    checkpoint (ours or the core's format)."""
    if row.get("trained"):
        return row["trained"]
    folder = _checkpoint_folder(row["checkpoint"])
    for candidate in (folder / "training.json", folder.parent / "training.json"):
        if candidate.is_file():
            t = json.loads(candidate.read_text())
            steps = t.get("steps_done") or (t.get("recipe") or t.get("train_config") or {}).get("steps")
            return {"steps": steps, "seconds": t.get("train_seconds", 0), "best_val": t.get("best_val"),
                    "hardware": t.get("hardware") or t.get("trained_on", "?")}
    return None


def _training(row: dict) -> str:
    t = _training_record(row)
    text = f"; trained {t['steps']} steps in {t['seconds']:.0f} s on {t['hardware']}" if t else ""
    if t and t.get("source"):
        text += f" ({t['source']})"
    if not (_checkpoint_folder(row["checkpoint"]) / "config.json").is_file():
        text += "; this checkpoint is not in the repository"
    return text


def _provenance(rows: list[dict]) -> list[str]:
    """One bullet per command that measured rows: the command, hardware, episodes, seed; then each row's time,
    model and how that model was trained."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["command"], r["hardware"], r.get("torch", "?"), r["episodes"], r["seed"]), []).append(r)
    lines = []
    for (command, hardware, torch_version, episodes, seed), members in groups.items():
        lines.append(f"- `{command}` on {hardware} (torch {torch_version}), {episodes} test episodes per column, "
                     f"seed {seed}:")
        for r in members:
            where = f", model `{_shown(r['checkpoint'])}`" if r.get("checkpoint") else ""
            trained = _training(r) if r.get("checkpoint") else ""
            lines.append(f"  - `{r['row']}`: {r['seconds']:.0f} s{where}{trained}")
    return lines


def _accs(acc: dict) -> str:
    return " / ".join(f"{acc[k]['mean']:.2f}" for k in list(COLUMN_NAMES) if k in acc)


def _training_length(by_key: dict, shorter: dict | None, source: str) -> list[str]:
    """The shorter runs against the table's rows, every number read from the two records."""
    if not shorter:
        return []
    lines = []
    for key, run in shorter["runs"].items():
        now = by_key.get(key)
        if not now:
            continue
        t = _training_record(now) if now.get("checkpoint") else None
        before = run["rows"][key]["accuracy"]
        took = f" in {run['train_seconds']:.0f} s on {run['trained_on']}" if run.get("train_seconds") else ""
        val = f", best validation 20-way 1-shot {run['best_val_20w1s']:.2f}" if run.get("best_val_20w1s") else ""
        longer = (f"{t['steps']} steps in {t['seconds']:.0f} s on {t['hardware']}"
                  + (f", best validation 20-way 1-shot {t['best_val']:.2f}" if t.get("best_val") else "")) if t \
            else "the table's run"
        lines.append(f"- `{key}`: {run['steps']} steps{took}{val}: {_accs(before)} on test; "
                     f"{longer}: {_accs(now['accuracy'])} (the table).")
    if lines:
        lines = ["### Training length", "",
                 f"The same rows from earlier, shorter runs (raw: `{source}`, extracted from commit "
                 f"{shorter['source_commit'][:7]}; same test episodes and seed):", ""] + lines
    return lines


def write_markdown(rows: list[dict], path: Path, paper: dict, paper_mnist: dict, finetune_cfg: Any,
                   shorter_runs: Path | None = SHORTER_RUNS) -> Path:
    """The generated section: tables, provenance, fine-tuning choices and the training-length comparison,
    each computed from `rows` and `shorter_runs` (None: leave that comparison out). No hand-typed numbers."""
    by_key = {r["row"]: r for r in rows}
    lines = ["## Table 1: the paper's baselines on Omniglot", "",
             "Generated by `python train/run.py table omniglot` (`train/table_omniglot.py`); do not edit by hand. "
             "Every number in this section is computed from `docs/results/omniglot_table.json` and the records "
             "named in it. Each cell: our accuracy in % ± the half-width of its 95% confidence interval over the "
             "test episodes, "
             "then *(the paper's Table 1 number, quoted, not measured here)*. Vinyals split; every row is "
             "evaluated on the same test episodes.", "",
             "| model | matching fn | fine-tune | " + " | ".join(COLUMN_NAMES.values()) + " |",
             "|---|---|---|---:|---:|---:|---:|"]
    for key, (model, matching, tuned, nums) in paper.items():
        row = by_key.get(key)
        measured = [row["accuracy"].get(k) if row else None for k in COLUMN_NAMES]
        cells = ["–" if n is None and acc is None else _cell(acc, n) for acc, n in zip(measured, nums)]
        lines.append(f"| {model} | {matching} | {tuned} | " + " | ".join(cells) + " |")
    lines += ["", "### One-shot 10-way MNIST, trained on Omniglot only", "",
              "| model | 10-way 1-shot | the paper |", "|---|---:|---:|"]
    for key, (model, number) in paper_mnist.items():
        row = by_key.get(key)
        ours = _cell(row["accuracy"].get("10w1s") if row else None, None)
        quoted = "–" if number is None else f"*{number:.0f}*"
        if number is not None and "siamese" in key:
            quoted += " *(Koch et al.'s, as the paper quotes it)*"
        lines.append(f"| {model} | {ours} | {quoted} |")
    lines += ["", "### How each number was measured", ""]
    lines += _provenance(rows)
    missing = [k for k in list(paper) + list(paper_mnist) if k not in by_key]
    if missing:
        lines += ["", "Not measured yet: " + ", ".join(f"`{k}`" for k in missing) + "."]
    tuned_rows = [r for r in rows if r.get("chosen")]
    if tuned_rows:
        lines += ["", "### Fine-tuning settings chosen on validation", "",
                  f"Adam on the top {getattr(finetune_cfg, 'blocks', '?')} Conv-4 block(s) and the head; tried "
                  f"learning rates {getattr(finetune_cfg, 'lrs', '?')} × steps {getattr(finetune_cfg, 'steps', '?')} "
                  f"on {getattr(finetune_cfg, 'val_episodes', '?')} validation episodes per column (seed 12345 + "
                  "1000·column). Each cell: learning rate, steps → validation accuracy (cosine rows: and with 0 "
                  "steps, i.e. without fine-tuning).", "",
                  "| row | " + " | ".join(COLUMN_NAMES.values()) + " |", "|---|---|---|---|---|"]
        for r in tuned_rows:
            cells = []
            for k in COLUMN_NAMES:
                c = r["chosen"][k]
                cell = f"{c['lr']:g}, {c['steps']} → {c['val_acc']:.2f}"
                base = c["tried"][str(c["lr"])].get("0")
                if base is not None and r.get("head") == "cosine":
                    cell += f" (0 steps: {base:.2f})"
                cells.append(cell)
            lines.append(f"| `{r['row']}` | " + " | ".join(cells) + " |")
    shorter = json.loads(shorter_runs.read_text()) if shorter_runs and shorter_runs.is_file() else None
    shown = _shown(str(shorter_runs)) if shorter_runs else ""
    length = _training_length(by_key, shorter, shown)
    if length:
        lines += [""] + length
    lines += ["", f"How the rows are built and where they differ from the paper: the hand-written notes below "
              f"(`{NOTES_FILE}`)."]
    write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def write_figure(rows: list[dict], path: Path, paper: dict, paper_mnist: dict) -> Path | None:
    """A plotly figure: one panel per column, ours (with 95% CI) beside the paper's number. HTML always;
    PNG too when kaleido can render it."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        print("plotly is not installed: no figure written")
        return None
    by_key = {r["row"]: r for r in rows}
    panels = [(k, name) for k, name in COLUMN_NAMES.items()] + [("10w1s", "MNIST 10-way 1-shot")]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels], shared_yaxes=True,
                        horizontal_spacing=0.02)
    labels = {k: f"{m} ({'FT' if t == 'Y' else 'no FT'}{'' if f == 'Cosine' else ', ' + f})"
              for k, (m, f, t, _) in paper.items()}
    for i, (col, _) in enumerate(panels, start=1):
        keys = list(paper) if col != "10w1s" else list(paper_mnist)
        names = [labels.get(k, paper_mnist.get(k, (k,))[0]) for k in keys]
        ours = [by_key.get(k, {}).get("accuracy", {}).get(col) for k in keys]
        if col == "10w1s":
            quoted = [paper_mnist[k][1] for k in keys]
        else:
            quoted = [paper[k][3][list(COLUMN_NAMES).index(col)] for k in keys]
        fig.add_trace(go.Bar(y=names, x=[a["mean"] if a else None for a in ours], orientation="h",
                             error_x=dict(type="data", array=[a["ci95"] if a else 0 for a in ours]),
                             marker_color="#4C78A8", name="ours (95% CI)", showlegend=i == 1), 1, i)
        fig.add_trace(go.Scatter(y=names, x=quoted, mode="markers", marker=dict(symbol="diamond", size=9,
                                 color="#E45756"), name="the paper (quoted)", showlegend=i == 1), 1, i)
        fig.update_xaxes(range=[0, 100], title_text="accuracy %", row=1, col=i)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="Table 1 on Omniglot (and MNIST transfer): ours vs the paper", height=560, width=1500,
                      barmode="overlay", legend=dict(orientation="h", y=-0.15), margin=dict(l=10, r=10))
    fig.write_html(path, include_plotlyjs="cdn")
    try:
        fig.write_image(path.with_suffix(".png"), scale=1)
    except Exception as e:  # kaleido (or the browser it drives) missing: the HTML is the figure
        print(f"no PNG ({type(e).__name__}: {e}); the HTML figure is {path}")
    return path
