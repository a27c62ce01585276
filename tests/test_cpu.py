"""matchnet.cpu: which speed-ups a CPU gets, and the CLI's malloc re-exec (without really re-executing)."""
from __future__ import annotations

import sys

import pytest
import torch

from matchnet import cpu


@pytest.mark.parametrize("native, device, amp, expected", [
    (True, "cpu", True, True),      # AVX512-BF16 / AMX: bf16 autocast applies
    (False, "cpu", True, False),    # emulated bf16 is slower than fp32: ignored
    (True, "cpu", False, False),    # never turned on behind the config's back
    (False, "cuda", True, True),    # GPUs: as before
    (True, "meta", True, False),
])
def test_use_amp_follows_the_hardware(monkeypatch, native, device, amp, expected):
    monkeypatch.setattr(cpu, "native_bf16", lambda: native)
    assert cpu.use_amp(amp, torch.device(device)) is expected


@pytest.fixture
def fake_exec(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(cpu.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cpu.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for key in (*cpu.MALLOC_SETTINGS, cpu.REEXEC_MARK, "MATCHNET_NO_MALLOC_TUNING"):
        monkeypatch.delenv(key, raising=False)
    return calls


def test_reexec_sets_the_malloc_variables_and_keeps_the_arguments(fake_exec, monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-u", "train/run.py", "train", "--config", "x.toml"])
    cpu.reexec_with_malloc_settings()
    (path, argv, env), = fake_exec
    assert path == sys.executable and argv[1:] == ["-u", "train/run.py", "train", "--config", "x.toml"]
    assert {k: env[k] for k in cpu.MALLOC_SETTINGS} == cpu.MALLOC_SETTINGS and env[cpu.REEXEC_MARK] == "1"


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"},  # the user's own value wins
                                 {"MATCHNET_NO_MALLOC_TUNING": "1"},     # the opt-out
                                 {cpu.REEXEC_MARK: "1"}])                # already re-executed: never twice
def test_reexec_leaves_the_process_alone(fake_exec, monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cpu.reexec_with_malloc_settings()
    assert fake_exec == []


def test_no_reexec_off_glibc(fake_exec, monkeypatch):
    monkeypatch.setattr(cpu.platform, "libc_ver", lambda: ("", ""))
    cpu.reexec_with_malloc_settings()
    assert fake_exec == []


def test_a_failed_exec_runs_on_as_is(monkeypatch, fake_exec):
    def fail(*a):
        raise OSError("no such interpreter")
    monkeypatch.setattr(cpu.os, "execve", fail)
    cpu.reexec_with_malloc_settings()  # returns: the command runs, only slower
