"""Request bodies of the OpenAI-compatible API (pydantic), and the JSON shapes it answers with.

Fields a client may send that chatsmith does not use (penalties, logit_bias, tools, user, ...)
are accepted and ignored, as lenient OpenAI-compatible servers do, so that existing clients
work unchanged. Fields that are used are validated strictly; a bad one is a 400 naming it.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from chatsmith.inference.completion import suffix_stops


def _encodable(text: str) -> str:
    """JSON may carry lone UTF-16 surrogates ("\\ud800"), which no UTF-8 text holds: refused
    here, with the field's name, rather than failing later in the tokenizer or the reply."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"holds a lone UTF-16 surrogate at character {e.start}; send valid Unicode text"
        ) from None
    return text


# Every string a request carries is `Text`: the fuzz test checks each one in the schema.
Text = Annotated[str, AfterValidator(_encodable)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
StopText = Annotated[Text, Field(min_length=1, max_length=256)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = False


class TextPart(BaseModel):
    """The `[{"type": "text", "text": ...}]` form of message content."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class SamplingRequest(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="ignore")
    model: Text | None = Field(None, description="Any name is accepted; the loaded model answers.")
    max_tokens: int | None = Field(None, ge=1, description="Most new tokens per choice.")
    temperature: float | None = Field(
        None, ge=0, le=2, allow_inf_nan=False, description="0 = greedy. Default 1."
    )
    top_p: Probability | None = Field(None, description="Nucleus sampling mass. Default 1.")
    top_k: int | None = Field(None, ge=1, description="Extension: sample among the k likeliest.")
    n: int | None = Field(None, ge=1, description="Choices to generate. Default 1.")
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = Field(
        None, description="Up to 4 strings; the reply ends before the first one it produces."
    )
    seed: int | None = Field(
        None, ge=-(2**63), le=2**64 - 1, description="Same seed and request: the same reply."
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name of max_tokens.")


class CompletionRequest(SamplingRequest):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=16)]
    suffix: Text | None = Field(
        None,
        description="Text after the insertion point: the model writes what goes between the "
        "prompt and it (fill-in-the-middle; for models pretrained with --fim). The text ends "
        "where the model starts to write the suffix (through its first non-blank line).",
    )

    def stop_list(self) -> list[str]:
        return super().stop_list() + suffix_stops(self.suffix)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


NonEmptyText = Annotated[Text, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`: text or token ids, one input or a list of them."""

    model_config = ConfigDict(extra="ignore")
    model: Text | None = Field(None, description="Any name is accepted; the loaded model answers.")
    input: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1, max_length=2048)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Must equal the model's width.")
