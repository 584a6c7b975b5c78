"""Chat messages -> the prompt text a model was trained on.

Two kinds of template:
- `JinjaChatTemplate`: the chat template stored in the GGUF metadata (`tokenizer.chat_template`),
  rendered the way Transformers renders it (sandboxed Jinja, `add_generation_prompt=True`).
- `TranscriptTemplate`: a plain transcript from config, for base models with no usable chat
  template (Gemma 3 270M base): one format string per role plus a generation prefix and stop
  sequences, e.g. `Question: {content}\\nAnswer:` with stop `["\\nQuestion:"]`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from router.errors import ConfigError, InputError

if TYPE_CHECKING:
    from router.backends.base import ChatMessage


class PromptTemplate(Protocol):
    def render(self, messages: Sequence[ChatMessage]) -> str: ...

    @property
    def stop(self) -> tuple[str, ...]: ...

    @property
    def parses_special(self) -> bool:
        """Whether the rendered text holds special tokens to tokenize as such."""
        ...


DEFAULT_ROLES: Mapping[str, str] = {
    "system": "{content}\n\n",
    "user": "Question: {content}\n",
    "assistant": "Answer: {content}\n\n",
}
DEFAULT_GENERATION = "Answer:"
DEFAULT_STOP: tuple[str, ...] = ("\nQuestion:", "\n\n")


@dataclass(frozen=True)
class TranscriptTemplate:
    """A plain transcript: `roles[role].format(content=...)` per message, then `generation`."""

    roles: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    generation: str = DEFAULT_GENERATION
    stop_sequences: tuple[str, ...] = DEFAULT_STOP
    prefix: str = ""

    def __post_init__(self) -> None:
        for role, fmt in self.roles.items():
            try:
                fmt.format(content="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"prompt_template.roles.{role}: bad format string {fmt!r} "
                    f"(use {{content}} for the message text): {exc}"
                ) from None

    def render(self, messages: Sequence[ChatMessage]) -> str:
        parts = [self.prefix]
        for m in messages:
            fmt = self.roles.get(m.role)
            if fmt is None:
                raise InputError(
                    f"role {m.role!r} is not supported by this tier's prompt template "
                    f"(roles: {', '.join(self.roles)})",
                    param="messages",
                )
            parts.append(fmt.format(content=m.content))
        parts.append(self.generation)
        return "".join(parts)

    @property
    def stop(self) -> tuple[str, ...]:
        return self.stop_sequences

    @property
    def parses_special(self) -> bool:
        return False


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class JinjaChatTemplate:
    """The model's own chat template (from GGUF metadata), rendered like Transformers does."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise InputError(f"chat template: {message}", param="messages")

        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda f: datetime.now().strftime(f)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"the model's chat template does not parse: {exc}") from None
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: Sequence[ChatMessage]) -> str:
        return self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            bos_token=self._bos,
            eos_token=self._eos,
        )

    @property
    def stop(self) -> tuple[str, ...]:
        return ()

    @property
    def parses_special(self) -> bool:
        return True


def transcript_from_config(raw: Mapping[str, Any]) -> TranscriptTemplate:
    """Build a TranscriptTemplate from the `prompt_template` mapping of a tier's config."""
    base = TranscriptTemplate()
    return TranscriptTemplate(
        roles=dict(raw.get("roles", base.roles)),
        generation=str(raw.get("generation", base.generation)),
        stop_sequences=tuple(raw.get("stop", base.stop_sequences)),
        prefix=str(raw.get("prefix", base.prefix)),
    )
