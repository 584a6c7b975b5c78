"""GET /openapi.json: the API's OpenAPI document (built once; `/docs` stays off)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from router.serve.openapi import openapi_schema
from router.serve.state import StateDep

router = APIRouter(tags=["docs"])


@router.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request, state: StateDep) -> JSONResponse:
    doc: dict[str, Any] | None = getattr(request.app.state, "openapi_doc", None)
    if doc is None:
        doc = openapi_schema(request.app, state.settings)
        request.app.state.openapi_doc = doc
    return JSONResponse(doc)
