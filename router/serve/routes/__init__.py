"""One APIRouter per OpenAI endpoint group, assembled by `router.serve.app`."""
