"""GET /v1/models: the cascade's virtual model, then every tier's model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from router.serve.state import StateDep

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    def entry(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "cascade-router"}

    ids = [state.settings.server.cascade_model, *(t.model for t in state.cascade.tiers)]
    return {"object": "list", "data": [entry(i) for i in ids]}
