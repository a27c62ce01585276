"""Everything the page shows about a result: the prediction, the class probabilities, the attention view
(thumbnails weighted by a(x̂, x_i), with the cosines behind it), the heatmap and the embedding map.

User text (class names, file names, messages) reaches the page only through `md` (Markdown) or `esc`
(HTML, plotly labels): names like `<img src=x onerror=...>` are shown as text.
"""
from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from matchnet import inference as inf

from .state import Session

MODEL_NAMES = {"base": "Matching Net", "fce": "Matching Net + FCE"}
# Inline Markdown only: the text never starts a line, so list and heading markers need no escape.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def esc(text: object) -> str:
    """For HTML text and plotly labels (plotly reads a few tags and decodes entities)."""
    return html.escape(str(text), quote=False)


def attr(text: object) -> str:
    """For an HTML attribute value in double quotes."""
    return html.escape(str(text), quote=True)


def md(text: object) -> str:
    """For gradio Markdown: HTML-escaped, and Markdown's punctuation backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", esc(text))


# --------------------------------------------------------------------------------------------- texts

def slot_title(s: Session, drawing: bool) -> str:
    """The line over the support pad: what is being filled, or that the set is complete."""
    c, j = s.current
    if s.building or not s.complete():
        verb = "Now drawing" if drawing else "Next upload goes to"
        how = "Draw below, then *Next*." if drawing else "*Upload into slots* fills slots from here on."
        return (f"**{verb}: class {md(s.names[c])}, example {j + 1} of {s.k_shot}.** {how} "
                "Click a thumbnail to redo it.")
    what = "random Omniglot characters" if s.chars else "classes"
    redo = "draw over one" if drawing else "replace one"
    return (f"**Support set complete:** {s.n_way} {what}, {s.k_shot} example{'s' * (s.k_shot > 1)} each. "
            f"Click a thumbnail to {redo}, or *Clear* to start your own.")


def status_line(s: Session, result: inf.Result, names: list[str]) -> str:
    line = (f"{len(names)} quer{'y' if len(names) == 1 else 'ies'} against {len(result.support_labels)} "
            f"support examples of {len(result.classes)} classes")
    scored = [(p, t) for p, t in zip(result.predicted, s.truth_names()) if t is not None]
    if scored:  # the random episode's query; a query drawn or uploaded beside it has no truth to score
        right = sum(p == t for p, t in scored)
        line += (f" · random episode: {right}/{len(scored)} correct "
                 f"(the query is {', '.join(md(t) for _, t in scored)})")
    return line + (f". {md(s.source())}." if s.chars else "")


def prediction_md(results: dict[str, inf.Result], names: list[str], model_names: dict[str, str]) -> str:
    cells = [[f"**{md(r.classes[i])}** ({100 * r.probs[q, i]:.0f}%)" for r in results.values()
              for i in [int(r.probs[q].argmax())]] for q in range(len(names))]
    top = f"## Prediction: {cells[0][0]}"
    if len(names) == 1 and len(results) == 1:
        return top
    header = "| query | " + " | ".join(model_names[k] for k in results) + " |\n" + "|---" * (1 + len(results))
    rows = "\n".join(f"| {md(n)} | " + " | ".join(c) + " |" for n, c in zip(names, cells))
    return f"{top}\n\n{header}|\n{rows}"


# ------------------------------------------------------------------------------------------- figures

def probs_figure(results: dict[str, inf.Result], name: str, q: int, model_names: dict[str, str]) -> go.Figure:
    fig = go.Figure()
    for key, r in results.items():
        fig.add_bar(x=list(range(len(r.classes))), y=r.probs[q], name=model_names[key],
                    text=[f"{p:.0%}" for p in r.probs[q]], textposition="outside",
                    customdata=[esc(c) for c in r.classes],
                    hovertemplate="%{customdata}: %{y:.3f}<extra>" + esc(model_names[key]) + "</extra>")
    classes = next(iter(results.values())).classes
    fig.update_layout(title=f"P(class | {esc(name)})", yaxis=dict(range=[0, 1.15], tickformat=".0%"), height=300,
                      margin=dict(l=40, r=10, t=40, b=40), barmode="group", showlegend=len(results) > 1,
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(tickvals=list(range(len(classes))), ticktext=[esc(c) for c in classes])
    return fig


def attention_at(result: inf.Result, scale: float | None) -> np.ndarray:
    """The attention [Q, S], or what it would be at another softmax scale (from the cosines)."""
    if scale is None or result.cosine is None or abs(scale - result.scale) < 1e-6:
        return result.attention
    z = scale * result.cosine.astype(np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def thumb_uri(x: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(inf.to_display(x, scale=1)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bar(kind: str, label: str, value: float, width: float) -> str:
    return (f'<div class="mn-row mn-{kind}"><span class="mn-lab">{label}</span><span class="mn-bar">'
            f'<i style="width:{100 * min(max(width, 0.0), 1.0):.1f}%"></i></span><b>{value:.2f}</b></div>')


def attention_html(results: dict[str, inf.Result], images: np.ndarray, captions: list[str], q: int,
                   query_name: str, scale: float | None, model_names: dict[str, str]) -> str:
    """One card per support example, most attended first: the thumbnail's border and strength show the
    attention; bars give the attention and the cosine similarity before the softmax (so a confident 1.00
    still shows which other examples were close)."""
    base = results["base"]
    att = {k: attention_at(r, scale)[q] for k, r in results.items()}
    cos = {k: r.cosine[q] if r.cosine is not None else np.full(len(captions), np.nan) for k, r in results.items()}
    order = sorted(range(len(captions)), key=lambda i: (-att["base"][i], -cos["base"][i]))
    model_scale = base.scale
    shown_scale = model_scale if scale is None else scale
    what_if = "" if abs(shown_scale - model_scale) < 1e-6 else f" (what-if: the model uses {model_scale:.0f})"
    head = (f'<div class="mn-att-head">Query <b>{esc(query_name)}</b>: attention a(x̂, xᵢ) = '
            f"softmax({shown_scale:.0f} · cos) over the support set{what_if}, most attended first. "
            f"Strong border = high attention; the <span class=\"mn-key-cos\">grey bar</span> is the cosine "
            "similarity before the softmax.</div>")
    cards = []
    for rank, i in enumerate(order):
        a = float(att["base"][i])
        rows = [_bar("att", "attn", a, a)]
        if "fce" in results:
            rows.append(_bar("fce", "FCE", float(att["fce"][i]), float(att["fce"][i])))
        rows.append(_bar("cos", "cos", float(cos["base"][i]), float(cos["base"][i])))
        if "fce" in results:
            rows.append(_bar("cos", "FCE cos", float(cos["fce"][i]), float(cos["fce"][i])))
        top = max(a, float(att["fce"][i]) if "fce" in results else 0.0)
        style = (f"border-width:{2 + round(6 * top)}px;border-color:rgba(29,78,216,{0.15 + 0.85 * top:.2f});"
                 f"opacity:{0.45 + 0.55 * top:.2f}")
        cards.append(f'<figure class="mn-card{" mn-top" if rank == 0 else ""}" data-label="{attr(captions[i])}" '
                     f'data-attention="{a:.4f}"><img alt="{attr(captions[i])}" src="{thumb_uri(images[i])}" '
                     f'style="{style}"><figcaption><div class="mn-name">{esc(captions[i])}</div>'
                     f'{"".join(rows)}</figcaption></figure>')
    return f'<div class="mn-att">{head}<div class="mn-att-grid">{"".join(cards)}</div></div>'


def heatmap_figure(results: dict[str, inf.Result], captions: list[str], query_names: list[str],
                   s: Session, scale: float | None, model_names: dict[str, str]) -> go.Figure | None:
    """Only where it adds to the cards: several queries (queries x support examples), or one query with
    several shots (classes x shots). None otherwise."""
    several = len(query_names) > 1
    if not several and s.k_shot == 1:
        return None
    fig = make_subplots(rows=len(results), cols=1, vertical_spacing=0.2,
                        subplot_titles=[f"attention, {esc(model_names[k])}" for k in results])
    filled = s.filled()
    for row, (key, r) in enumerate(results.items(), start=1):
        att = attention_at(r, scale)
        if several:
            z, x, y = att, [esc(c) for c in captions], [esc(n) for n in query_names]
            hover = "query %{customdata[0]}<br>support %{customdata[1]}<br>attention %{z:.3f}"
        else:  # one query: classes x shots
            z = np.full((s.n_way, s.k_shot), np.nan)
            for (c, j), a in zip(filled, att[0]):
                z[c, j] = a
            x, y = [f"example {j + 1}" for j in range(s.k_shot)], [esc(n) for n in s.names[:s.n_way]]
            hover = "class %{customdata[0]}, %{customdata[1]}<br>attention %{z:.3f}"
        fig.add_trace(go.Heatmap(z=z, x=list(range(len(x))), y=list(range(len(y))), zmin=0, zmax=1,
                                 colorscale="Blues", showscale=row == 1,
                                 customdata=[[(yy, xx) for xx in x] for yy in y],
                                 hovertemplate=hover + "<extra></extra>"), row=row, col=1)
        fig.update_xaxes(tickvals=list(range(len(x))), ticktext=x, row=row, col=1)
        fig.update_yaxes(tickvals=list(range(len(y))), ticktext=y, autorange="reversed", row=row, col=1)
    rows = len(query_names) if several else s.n_way
    fig.update_layout(height=90 + len(results) * (50 + 24 * rows), margin=dict(l=10, r=10, t=30, b=10),
                      title=None)
    return fig


def embedding_figure(result: inf.Result, captions: list[str], support_classes: list[int], names: list[str],
                     query_names: list[str], model_name: str) -> go.Figure | None:
    """The unit-length support and query embeddings projected on their first two principal components: the
    cosine is the angle between these points (before projection)."""
    if result.support_points is None or result.query_points is None:
        return None
    points = np.concatenate([result.support_points, result.query_points]).astype(np.float64)
    centred = points - points.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.pad(centred @ vt[:1].T, ((0, 0), (0, 1)))
    n_support = len(result.support_points)
    fig = go.Figure()
    palette = qualitative.Plotly + qualitative.D3
    for c, name in enumerate(names):
        idx = [i for i, k in enumerate(support_classes) if k == c]
        if not idx:
            continue
        fig.add_scatter(x=xy[idx, 0], y=xy[idx, 1], mode="markers+text", name=esc(name),
                        text=[esc(captions[i]) for i in idx], textposition="top center",
                        marker=dict(size=11, color=palette[c % len(palette)]),
                        hovertemplate="%{text}<extra></extra>")
    q = xy[n_support:]
    fig.add_scatter(x=q[:, 0], y=q[:, 1], mode="markers+text", name="queries", text=[esc(n) for n in query_names],
                    textposition="bottom center", marker=dict(size=15, symbol="star", color="black"),
                    hovertemplate="query %{text}<extra></extra>")
    fig.update_layout(title=f"Embeddings, first two principal components ({esc(model_name)})", height=360,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.1))
    fig.update_xaxes(showticklabels=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, zeroline=False, scaleanchor="x")
    return fig
