"""bench/cpu_speed.py's row table: each row changes exactly what it declares against its compared row (no timing)."""
import copy
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("cpu_speed", Path(__file__).resolve().parent.parent / "bench" / "cpu_speed.py")
cpu_speed = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(cpu_speed)


def rows():
    return cpu_speed.rows_table((60, 1, 5, 1))


def test_shipped_table_passes_and_chain_is_as_specified():
    table = rows()
    cpu_speed.check_chain(table)
    by = {r["name"]: r for r in table}
    chain = {"r2": ("r1", "threads"), "r3": ("r2", "interop"), "r4": ("r3", "malloc"), "r5": ("r4", "channels_last"),
             "r6": ("r5", "bf16"), "r7": ("r6", "compile"), "r8": ("r6", "episodes"), "r6+fce": ("r6", "fce"),
             "peer+malloc": ("peer", "malloc")}
    for name, (other, change) in chain.items():
        assert (by[name]["compared_with"], by[name]["change"]) == (other, change)
    assert by["r1"]["settings"]["threads"] == 1 and by["r1"]["settings"]["interop"] is None
    assert by["r8"]["settings"]["episodes"] == 4
    # the like-for-like pair of the peer: both FCE, same shape
    for key in ("way", "shot", "query", "episodes", "fce"):
        assert by["peer"]["settings"][key] == by["r6+fce"]["settings"][key]
    assert by["peer"]["settings"]["impl"] == "easyfsl" and not by["peer"]["settings"]["malloc"]
    # the recipe twins differ in the fast-path bundle only
    assert by["recipe"]["compared_with"] == "recipe-fp32" and by["recipe"]["change"] == "fast_path"
    assert (by["recipe"]["settings"]["way"], by["recipe"]["settings"]["query"]) == (60, 5)
    assert by["old-recipe"]["settings"]["episodes"] == 8


def test_recipe_argument_sets_the_recipe_rows():
    by = {r["name"]: r for r in cpu_speed.rows_table((20, 5, 3, 2))}
    assert [by["recipe+fce"]["settings"][k] for k in ("way", "shot", "query", "episodes")] == [20, 5, 3, 2]


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t[2]["settings"].update(malloc=True), "changes"),  # r3: two changes against r2
    (lambda t: t[1]["settings"].update(threads=1), "changes"),  # r2: no change against r1
    (lambda t: t[1].update(compared_with="r5"), "not an earlier row"),
    (lambda t: t[1].update(compared_with="nope"), "not an earlier row"),
    (lambda t: t[4].update(change="bf16"), "declared"),  # r5 changes channels_last, says bf16
    (lambda t: t[3].update(name="r2"), "twice"),
    (lambda t: t[0]["settings"].pop("fce"), "keys"),
])
def test_check_chain_rejects_broken_tables(mutate, message):
    table = copy.deepcopy(rows())
    mutate(table)
    with pytest.raises(ValueError, match=message):
        cpu_speed.check_chain(table)


def test_bundle_must_change_all_of_its_settings():
    table = copy.deepcopy(rows())
    twin = next(r for r in table if r["name"] == "recipe-fp32")
    twin["settings"]["malloc"] = True  # now "recipe" changes only channels_last + bf16, not the whole bundle
    with pytest.raises(ValueError, match="fast_path"):
        cpu_speed.check_chain(table)


def test_markdown_shows_each_row_and_its_ratio():
    record = {"rows": [
        {"name": "r1", "change_text": "baseline", "shape": "5-way", "episodes_per_s": 10.0, "images_per_s": 800.0,
         "pct_fp32_peak": 1.5, "pct_bf16_peak": None, "ratio": None, "compared_with": None},
        {"name": "r7", "change_text": "compile False -> True", "shape": "5-way", "episodes_per_s": 20.0,
         "images_per_s": 1600.0, "pct_fp32_peak": 3.0, "pct_bf16_peak": 1.2, "ratio": 2.0, "compared_with": "r1",
         "compile_s": 35.0, "break_even_steps": 700.0}], "ratios": {"r6+fce / peer": 1.25}}
    text = cpu_speed.markdown(record)
    assert "| r1 | baseline | 5-way | 10.00 | 800 | 1.5 |  |" in text
    assert "x2.00 vs r1; compile 35 s, pays after 700 steps" in text and "3.0 (1.2)" in text
    assert "r6+fce / peer: x1.25" in text
