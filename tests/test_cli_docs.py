"""What the README tells a new user to run: the data-root layouts it promises, the options its commands show,
and the costs they announce."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from matchnet.data import load_omniglot
from matchnet.data.omniglot import omniglot_dir
from matchnet.data.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]


def test_data_root_finds_omniglot_in_either_layout(omniglot_tree, tmp_path):
    """--data-root DIR finds DIR/omniglot-py (the README's layout) and DIR/omniglot/omniglot-py (a data root
    with one folder per dataset, as ../shared/data has it)."""
    nested = tmp_path / "root"
    shutil.copytree(omniglot_tree / "omniglot-py", nested / "omniglot" / "omniglot-py")
    assert omniglot_dir(nested) == nested / "omniglot" / "omniglot-py"
    direct = load_omniglot(omniglot_tree, strict=False, cache=False)
    found = load_omniglot(nested, strict=False, cache=False)
    assert found.names == direct.names and torch.equal(found.images, direct.images)
    # both present: the README's own layout wins; neither: the README's layout is named (and downloaded to)
    shutil.copytree(omniglot_tree / "omniglot-py", nested / "omniglot-py")
    assert omniglot_dir(nested) == nested / "omniglot-py"
    assert omniglot_dir(tmp_path / "empty") == tmp_path / "empty" / "omniglot-py"


# -- ablate-scale: stops like train, records only what ran --------------------------------------------------

def ablation_config(tmp_path: Path) -> Path:
    """A tiny ablation recipe on synthetic colour images (12 classes x 8, 28 px): seconds per variant."""
    write_synthetic(tmp_path / "data", "folder", classes=12, per_class=8, width=28, height=28, seed=0)
    config = tmp_path / "tiny.toml"
    config.write_text(
        'name = "tiny"\ndataset = "folder"\nsplit = "random"\n'
        f'data_root = "{(tmp_path / "data").as_posix()}"\n'
        "hidden = 8\nway = 3\nshot = 1\nquery = 2\nval_tasks = [[2, 1]]\nval_query = 3\n"
        "log_every = 1\ncheckpoint_every = 100000\ndevice = \"cpu\"\nprogress = false\n"
        "[data_options]\nimage_size = 28\nworkers = 1\ncache = false\nprogress = false\n")
    return config


def ablate(config: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train" / "run.py"), "ablate-scale", "--config", str(config),
            "--steps", str(steps), "--val-episodes", "5", "--out-dir", str(out), *extra]


def test_ablate_scale_stops_on_sigterm_and_records_nothing_that_did_not_run(tmp_path):
    config, out = ablation_config(tmp_path), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(ablate(config, out, 100000), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    first = out / "paper_(scale_1,_fixed)"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and \
            len((first / "log.jsonl").read_text().splitlines() if (first / "log.jsonl").is_file() else []) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:  # a run that ignored the signal must not outlive the test
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (stdout, stderr)
    assert "Traceback" not in stderr and "'variant'" not in stdout  # no row for the stopped variant
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted at step" in lines[0] and "of 100000" in lines[0], stderr
    stopped_at = int(lines[0].split("interrupted at step ")[1].split()[0])
    assert 2 <= stopped_at < 100000
    assert not (out / "ablation_scale.json").exists()
    assert sorted(p.name for p in out.iterdir()) == [first.name]  # no next variant
    from matchnet.checkpoint import load_state
    assert load_state(first / "last.safetensors")[1]["step"] == stopped_at  # saved where it stopped


def test_ablate_scale_records_the_steps_that_ran_and_resumes_finished_variants(tmp_path):
    config, out = ablation_config(tmp_path), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(ablate(config, out, 3), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "ablation_scale.json").read_text())
    assert [r["steps"] for r in record["rows"]] == [3, 3, 3, 3]
    assert all("val_2w1s" in r or any(k.startswith("val_") for k in r) for r in record["rows"])
    again = subprocess.run(ablate(config, out, 3), capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "ablation_scale.json").read_text())["rows"] == record["rows"]  # read back, not rerun


# -- what the long commands say about themselves -------------------------------------------------------------

def cli_output(*args: str, cwd: Path = ROOT) -> tuple[str, list[str]]:
    """A run.py command's stdout, and the modules it had imported (to show that --help imports no torch)."""
    script = ("import runpy, sys, json\nsys.argv = ['train/run.py'] + %r\n"
              "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
              "print('MODULES ' + json.dumps(sorted(sys.modules)))\n") % (list(args), str(ROOT / "train" / "run.py"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=cwd)
    text, modules = out.stdout.rsplit("MODULES ", 1)
    return text, json.loads(modules)


def test_table_help_lists_its_options_and_costs_without_importing_torch():
    text, modules = cli_output("table", "--help")
    for option in ("TABLE_ROWS", "TABLE_SET", "TABLE_OUT", "TABLE_RETRAIN", "TABLE_SCALES", "--quick"):
        assert option in text, option
    assert text.count("Cost on a CPU:") == 4 and "not measured on a CPU" in text  # miniImageNet never ran here
    assert "torch" not in modules


def test_rebuild_plan_on_a_cpu_estimates_from_the_measured_cpu_records(tmp_path):
    text, _ = cli_output("rebuild", "--plan", "--device", "cpu", cwd=tmp_path)  # no runs/: everything to do
    assert "orders of magnitude" not in text
    assert "estimate" in text and "cpu_speed.json, row recipe" in text and "eval_cpu_omniglot-vinyals.json" in text
    total = text.split("estimated time: ~")[1].split(" on a quiet")[0]
    # three 28-px models at the measured fast-path rates (about an hour and a half) and the 56-px within-alphabet
    # model at its shipped model's own measured times (one to two hours): not the 2 h the 28-px rates alone gave
    assert "omniglot-lake-within, from its own shipped model instead" in text
    minutes = float(total[:-4]) if total.endswith(" min") else 60 * float(total[:-2])
    assert 150 <= minutes <= 300, total


def test_cpu_estimates_reproduce_the_records_they_come_from():
    sys.path.insert(0, str(ROOT))
    from train import costs

    record = json.loads(costs.EVAL_RECORD.read_text())
    assert abs(costs.eval_cost(record["episodes"]).seconds - record["eval_seconds"]) < 1e-6
    rows = {r["name"]: r for r in json.loads(costs.FAST_RECORD.read_text())["rows"]}
    assert costs.train_rate(1) == (rows["recipe"]["images_per_s"], 1)  # the CPU recipe as the CLI trains it
    assert costs.train_rate(1, fce=True) == (rows["recipe+fce"]["images_per_s"], 1)


# -- the README's own examples ------------------------------------------------------------------------------

def readme_block(after: str, lang: str = "python") -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"```{lang}\n", text.index(after)) + len(f"```{lang}\n")
    return text[start:text.index("```", start)]


def test_readme_classify_example_shows_what_the_call_returns():
    """The printed reply in the README is the real one: every key, the same values (the handler /classify
    runs, on the shipped checkpoints and the example files the README names)."""
    import ast

    sys.path.insert(0, str(ROOT))
    import demo
    from demo.models import load
    from demo.state import ApiSession

    shown = ast.literal_eval(readme_block("prints (run against `python app.py`"))
    call = readme_block("The same model is scriptable through the named endpoint `/classify`")
    ex = ROOT / "assets" / "examples" / "omniglot"
    files = [str(ex / f.split("{ex}/")[1].split('"')[0]) for f in call.split("handle_file(f\"")[1:]]
    support, queries = files[:-1], files[-1:]
    labels = ast.literal_eval(call.split("labels=")[1].split("]")[0] + "]")
    got = demo.classify_files(load(), support, labels, queries, False, ApiSession())
    assert list(got) == list(shown)
    for key, value in shown.items():
        if key == "similarity":
            assert all(abs(a - b) < 1e-4 for a, b in zip(got[key][0], value[0]))
        else:
            assert got[key] == value, key


def test_pyproject_demo_extra_installs_what_the_demo_imports():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda deps: {d.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip() for d in deps}  # noqa: E731
    assert {"gradio", "plotly", "gradio_client"} <= names(project["optional-dependencies"]["demo"])
    assert not {"gradio", "plotly"} & names(project["dependencies"])  # the library itself stays without them
    assert "pip install -e .[demo]" in (ROOT / "README.md").read_text()
