"""Shared fixtures: tiny random hosts built from configs (no downloads), a network guard, a simulated
kill, and the expensive things many tests read, made once per session: the embedded host, the
emotion judge and one smoke-profile training of notebook 02's runs."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "netguard"))
from netguard import block_network, unblock_network  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Fail any connection that leaves this machine: tests must run offline."""
    block_network()
    yield
    if os.environ.get("IRM_BLOCK_NETWORK") != "1":
        unblock_network()


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    """A small random causal LM of the given family, in fp32, eval mode."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

    torch.manual_seed(seed)
    if model_type in ("llama", "mistral", "qwen2"):
        config_class = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[model_type]
        config = config_class(**{
            "vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **overrides,
        })
    elif model_type == "gpt2":
        config = GPT2Config(vocab_size=97, n_embd=32, n_layer=4, n_head=4, n_positions=128,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0, **overrides)
    elif model_type == "gpt_neox":
        config = GPTNeoXConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                               num_attention_heads=4, max_position_embeddings=128,
                               bos_token_id=1, eos_token_id=2, pad_token_id=0, **overrides)
    else:
        raise ValueError(model_type)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


class Killed(BaseException):
    """Stands for SIGKILL at one point of a write (a BaseException, so no `except Exception` stops it)."""


def kill_on_call(monkeypatch, owner, name: str, nth: int, when=lambda *args: True) -> None:
    """Make the `nth` call of `owner.name` whose arguments satisfy `when` raise Killed instead of running."""
    original, calls = getattr(owner, name), {"n": 0}

    def wrapper(*args, **kwargs):
        if when(*args):
            calls["n"] += 1
            if calls["n"] == nth:
                raise Killed(f"{name} call {nth}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def tiny_tokenizer():
    """A word-level tokenizer over the tiny models' vocabulary: "w<i>" is token i, "w2" is EOS, no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(96)} | {"[UNK]": 96}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w2", unk_token="[UNK]")


def striated(layers: int = 6, hidden: int = 20, index: int = 7, seed: int = 0, height: float = 10.0) -> np.ndarray:
    """A [layers, hidden] magnitude matrix with column `index` `height` larger than the rest in every layer."""
    matrix = np.random.default_rng(seed).uniform(0, 1, (layers, hidden))
    matrix[:, index] += height
    return matrix


@pytest.fixture
def tiny_host():
    from irmlib.host import Host

    return Host.from_model(tiny_model("llama"), name="tiny-llama")


@pytest.fixture
def tiny_text_host():
    """The tiny random Llama with tiny_tokenizer, so text goes in and out (pad token: EOS, as Host.from_model sets it)."""
    from irmlib.host import Host

    return Host.from_model(tiny_model("llama"), tokenizer=tiny_tokenizer(), name="tiny-llama")


# ----- made once per session: read them, never change them (copy what a test must write to) -----

@pytest.fixture(scope="session")
def embedded_host():
    """The embedded host (SmolLM2-135M-Instruct, float32, CPU), loaded once for every test that reads it."""
    from irmlib.host import load_host

    return load_host("embedded", device="cpu")


@pytest.fixture(scope="session")
def judge(background):
    """The notebooks' emotion judge (irmlib.judge.default_judge), once per session, from the
    reader's cache that the JUDGE_CACHE job fills."""
    from irmlib.judge import default_judge

    start_judge_cache(background)
    assert background.result(JUDGE_CACHE).returncode == 0, background.result(JUDGE_CACHE).stderr[-3000:]
    return default_judge()


JUDGE_CACHE = "judge cache"
JUDGE_NOTEBOOKS = ("01_data", "03_sample_generations", "05_lm_head_probing", "06_mechanism", "07_regime")


JUDGE_CACHE_SCRIPT = """
from irmlib.judge import default_judge
from irmlib.profile import load_profile
from irmlib.studies.data_sheet import gate_eval

judge = default_judge(load_profile("smoke").analysis.gate_rules())  # the smoke notebooks' gate
for split in ("test", "fresh"):
    gate_eval(judge, split=split, host=judge.base_host)
"""


def start_judge_cache(background: "Background") -> None:
    """Fit the judge once in a process of its own, so the texts it is fitted on are read into the
    reader's cache (irmlib.judge.HostReader.cached) before the jobs that fit it again: fitted at
    once from a cold cache, each would read them all (minutes on 2 cores). It also reads notebook
    01's held-out gate texts under the base host, with the smoke profile's gate, into the gate's
    cache (irmlib.gate.text_nll), so 01, run in the pipeline and alone, reads them from there."""
    if JUDGE_CACHE not in background.jobs:
        command = [sys.executable, "-c", JUDGE_CACHE_SCRIPT]
        background.submit(JUDGE_CACHE, lambda: background.run(command, cwd=Path(__file__).parent.parent))


SMOKE_TRAINING = "smoke training"
SMOKE_TRAINING_SCRIPT = """
from irmlib.data import profile_rows
from irmlib.host import load_host
from irmlib.profile import load_profile
from irmlib.profile_runs import trained_irms

profile = load_profile("smoke")
trained_irms(load_host(profile.host, device="cpu"), profile, rows=profile_rows(profile))
"""


def start_smoke_training(background: "Background", tmp_path_factory) -> None:
    """Notebook 02's runs of the smoke profile, trained once per session in a process of their own by
    the function notebooks 03-06 call when 02 has not run (irmlib.profile_runs.trained_irms, from an
    empty runs/), under an IRM_ROOT of their own: the background job SMOKE_TRAINING, whose value
    is (that root, the CompletedProcess)."""
    if SMOKE_TRAINING in background.jobs:
        return
    root = tmp_path_factory.getbasetemp() / "smoke-training"
    root.mkdir()
    (root / "data").symlink_to(Path(__file__).parent.parent / "data")
    command = [sys.executable, "-c", SMOKE_TRAINING_SCRIPT]
    background.submit(SMOKE_TRAINING, lambda: (root, background.run(command, cwd=root, env={"IRM_ROOT": str(root)})))


@pytest.fixture(scope="session")
def smoke_training(background, tmp_path_factory) -> dict:
    """The session's smoke training (start_smoke_training): {"root", "profile", "rows", "printed"}.
    Read it, never write to it: copy it first (`smoke_root`, `copy_smoke_runs`)."""
    from irmlib.data import profile_rows
    from irmlib.profile import load_profile

    start_smoke_training(background, tmp_path_factory)
    root, result = background.result(SMOKE_TRAINING)
    assert result.returncode == 0, f"the smoke training failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    profile = load_profile("smoke")
    return {"root": root, "profile": profile, "rows": profile_rows(profile), "printed": result.stdout}


def copy_smoke_runs(root: Path, destination: Path) -> Path:
    """Hard-link the smoke training under `root` (runs/smoke/irm/) into `destination`/runs/smoke/irm/:
    instant, and safe because a finished run is only read (every write of irmlib replaces a file
    rather than changing it in place)."""
    shutil.copytree(root / "runs" / "smoke" / "irm", destination / "runs" / "smoke" / "irm", copy_function=os.link,
                    dirs_exist_ok=True)
    return destination


@pytest.fixture
def smoke_root(smoke_training, tmp_path, monkeypatch) -> Path:
    """A fresh IRM_ROOT holding a copy of the session's smoke training (and data/), for a test that writes runs."""
    root = copy_smoke_runs(smoke_training["root"], tmp_path / "root")
    (root / "data").symlink_to(Path(__file__).parent.parent / "data")
    monkeypatch.setenv("IRM_ROOT", str(root))
    return root


def copy_of_repository(destination: Path) -> Path:
    """The working tree as a fresh clone would hold it with these changes: tracked and untracked
    files that git does not ignore (so no runs/, no .venv, no figures of other runs)."""
    import shutil
    import subprocess

    root = Path(__file__).parent.parent
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = root / name
        if source.is_file():  # a file deleted in the working tree is listed but absent
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


# ----- long subprocess tests, run in the background beside the in-process ones -----

WORKERS_ENV = "IRM_TEST_WORKERS"


class Background:
    """Jobs that run subprocesses (a notebook alone, the paper profile's pipeline, the smoke
    training), started as the session starts and run beside the in-process tests, at most
    `workers` at a time. A test marked `background` waits for its job's result, then checks it;
    those tests run last, so the in-process tests overlap the jobs.

    Subprocesses get the environment the session started with (tests change os.environ as they
    run) plus the job's own variables. Jobs run in threads of this process, so a job must not use
    torch's global state (seeds): whatever needs it runs in the job's subprocess."""

    def __init__(self, workers: int):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.workers = workers
        self.environ = dict(os.environ)
        self.started = time.time()
        self.timings: dict = {}  # key: (start, seconds), from the session's start
        self.jobs: dict = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="background-test")
        self._running: set = set()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, key, job, after=()) -> None:
        """Run `job()` when a worker is free, once the jobs `after` have ended (a job waiting for
        them holds no worker); its value is `result(key)`'s."""
        from concurrent.futures import Future

        def run():
            started = time.time()
            try:
                return job()
            finally:
                self.timings[key] = (started - self.started, time.time() - started)

        def relay(inner):
            if inner.exception() is not None:
                outer.set_exception(inner.exception())
            else:
                outer.set_result(inner.result())

        def start(_=None):
            with self._lock:
                if outer.running() or not all(self.jobs[other].done() for other in after):
                    return
                outer.set_running_or_notify_cancel()
            failed = [self.jobs[other].exception() for other in after if self.jobs[other].exception() is not None]
            if failed:
                outer.set_exception(failed[0])
            else:
                self._pool.submit(run).add_done_callback(relay)

        outer = Future()
        self.jobs[key] = outer
        for other in after:
            self.jobs[other].add_done_callback(start)
        start()

    def result(self, key):
        return self.jobs[key].result()

    def run(self, command: list[str], cwd: Path, env: dict | None = None, timeout: float = 1800):
        """Run a command to its end (killed after `timeout` s) in the session's environment updated by
        `env` (a None value unsets a variable); a CompletedProcess with text output."""
        import subprocess

        environment = {key: value for key, value in {**self.environ, **(env or {})}.items() if value is not None}  # None: unset
        # The jobs and this process share the cores: one thread each (see `background`).
        environment.setdefault("OMP_NUM_THREADS", "1")
        with self._lock:
            if self._closed:
                raise RuntimeError("the test session is over")
            process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self._running.add(process)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            stderr += f"\n[killed after {timeout:.0f} s]"
        finally:
            with self._lock:
                self._running.discard(process)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for process in self._running:
                process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "background: waits for a subprocess job started when the session starts (conftest.Background)")


def pytest_collection_modifyitems(session, config, items):
    """Tests that wait for a background job run last, so the in-process tests run while the jobs do."""
    items.sort(key=lambda item: item.get_closest_marker("background") is not None)


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """Start the selected tests' background jobs: the judge's cache and the smoke training first
    where anything reads them, then each module's jobs (its `start_background(background, items, tmp_path_factory)`),
    longest first."""
    background = Background(int(os.environ.get(WORKERS_ENV) or os.cpu_count() or 1))
    items = request.session.items
    if any("judge" in item.fixturenames for item in items):
        start_judge_cache(background)
    if any("smoke_training" in item.fixturenames for item in items):
        start_smoke_training(background, tmp_path_factory)
    modules = {}
    for item in items:
        if item.get_closest_marker("background") is not None:
            modules.setdefault(item.module, []).append(item)
    for module, module_items in sorted(modules.items(), key=lambda m: getattr(m[0], "BACKGROUND_ORDER", 100)):
        module.start_background(background, module_items, tmp_path_factory)
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    if background.jobs:
        # This process shares the cores with the jobs: one thread, like each of them (torch's threads
        # wait on each other at every operation, and a thread that is not running stalls the rest).
        # The processes tests start get one too, so a run here and one in a child compute alike.
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    yield background
    background.close()
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp
    request.config.stash[TIMINGS] = (background.workers, background.timings)


TIMINGS = pytest.StashKey[tuple]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """When each background job started and how long it ran (seconds from the session's start)."""
    workers, timings = config.stash.get(TIMINGS, (0, {}))
    if timings:
        terminalreporter.section(f"background jobs ({workers} at a time)")
        for key, (start, seconds) in sorted(timings.items(), key=lambda item: item[1][0]):
            terminalreporter.write_line(f"{seconds:7.1f}s  from {start:6.1f}s  {key if isinstance(key, str) else ' '.join(key)}")


class RuleJudge:
    """A stand-in for irmlib.judge.EmotionJudge with no model: p(anger) = `anger(text)` for texts
    irmlib.gate's rules call fluent, NaN for the rest, as the real judge leaves them."""

    labels = ["anger", "neutral"]
    base_host = None  # no model: the gate without perplexity

    def __init__(self, anger):
        from irmlib.gate import GateRules

        self.anger, self.rules = anger, GateRules()

    def read(self, texts, host=None):
        import numpy as np
        import pandas as pd

        from irmlib.gate import gate_texts

        labels = gate_texts(texts, self.rules, host)
        p = np.array([self.anger(t) if label == "fluent" else np.nan for t, label in zip(texts, labels)], dtype=float)
        return labels, pd.DataFrame({"anger": p, "neutral": 1 - p})

    def gate(self, texts, host=None):
        return self.read(texts, host)[0]

    def probabilities(self, texts):
        return self.read(texts)[1]
