"""What a chat completion request to /v1 may say, and how a refusal reads.

Supported: `messages` with roles system (or developer), user and assistant, their content a
string or a list of `text` and `image_url` parts, images as inline data URLs only (this
server never fetches a URL); `max_completion_tokens` / `max_tokens` (at most
SNAPDESK_MAX_NEW_TOKENS), `temperature` (omitted: 1.0 as in OpenAI's API; 0 is greedy
decoding), `top_p` and the extras `top_k`, `min_tokens`, `repetition_penalty`; `n` must be
1; `stream` with `stream_options.include_usage`; `logprobs`. What would change the answer
but cannot be honoured is refused by name, never silently ignored: tools and function
calling, `stop`, `logit_bias`, frequency and presence penalties, `top_logprobs` above 0, JSON
response formats, audio. What would not change it (`seed`, `user`, `store`, `metadata`,
`image_url.detail`, unknown fields) is ignored.

The request is a pydantic model, which is also the schema /openapi.json publishes. A
refusal is a 400 in OpenAI's shape whose `param` names the offending field as OpenAI does
(`messages[1].content[0].text`), in words for the caller: pydantic's own words name Python
types, so each field says what it must be (`explained`). The checks that need the server's
settings (the answer-length ceiling, the image size) come after the model, in `chat_body`.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.base import SamplingParams
from engine.images import ImageLimits, ImageRejected

from .openai_errors import ApiError, invalid

MAX_MESSAGES = 1000
MAX_TOP_K = 2**31 - 1  # beyond any vocabulary: the same as no top-k, and never an overflow in a backend
MAX_IMAGES = 8  # images in one request
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
REFUSED = "refused"  # the error type of this module's own refusals: their message is for the caller as it is

# Unions are told apart by these tags; pydantic puts them in an error's location, `param` leaves them out.
STRING, PARTS, TEXT, IMAGE = "<string>", "<parts>", "<text>", "<image_url>"
UNION_TAGS = {STRING, PARTS, TEXT, IMAGE}


def refusal(message: str, field: str | None = None, code: str | None = None) -> PydanticCustomError:
    """A refusal in words for the caller. `field` names the field it is about when the object
    that holds it refuses; `code` is OpenAI's error code."""
    context = {key: value for key, value in (("field", field), ("code", code)) if value}
    return PydanticCustomError(REFUSED, message, context or None)


def explained(message: str, **by_error: str) -> WrapValidator:
    """Refuses with `message` (or `by_error[pydantic's error type]`) whatever pydantic finds wrong
    with the value itself; what is wrong deeper inside, and this module's own refusals, keep
    their words. `{name}` in a message is the field's name, `{value}` the value's repr."""

    def validate(value: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            if error["loc"] or error["type"] == REFUSED:
                raise
            template = by_error.get(error["type"], message)
            shown = repr(value) if "{value}" in template else ""
            raise refusal(template.format(name=info.field_name, value=shown)) from None

    return WrapValidator(validate)


def _integral(value: Any) -> Any:
    """JSON does not tell 5 from 5.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(low: int, high: int | None = None, message: str = "") -> Any:
    """An integer in [low, high] (5.0 is 5), refused with `message` or one that gives the range."""
    limit = f" and at most {high}" if high is not None else ""
    return Annotated[Annotated[int, Field(ge=low, le=high), Strict(), BeforeValidator(_integral)],
                     explained(message or f"`{{name}}` must be an integer of at least {low}{limit}.")]


def number(low: float, high: float, above: bool = False) -> Any:
    """A finite number in [low, high], or (low, high] when `above`."""
    bound = f"greater than {low:g}" if above else f"at least {low:g}"
    limits = Field(gt=low, le=high) if above else Field(ge=low, le=high)
    return Annotated[Annotated[float, limits, Strict(), Field(allow_inf_nan=False)],
                     explained(f"`{{name}}` must be a number {bound} and at most {high:g}.")]


def _unicode(text: str) -> str:
    """JSON's "\\ud800" escapes can smuggle lone surrogates into a string."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise refusal("The text contains an unpaired UTF-16 surrogate, which is not valid Unicode.") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_unicode)]
Flag = Annotated[StrictBool, BeforeValidator(lambda value: value or False)]  # 0, "" and [] are false too


class Schema(BaseModel):
    """Absent and null are one case (OpenAI's clients send null for what they leave unset): null
    takes a field's default, and a required field's own refusal explains both."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        required = {name: None for name, field in cls.model_fields.items() if field.is_required()}
        return required | {name: value for name, value in data.items() if value is not None}


# Messages ---------------------------------------------------------------------------------
class TextContent(Schema):
    type: Literal["text"]
    text: Annotated[Text, explained("A text part needs a `text` string.")]


class ImageUrl(Schema):
    url: Annotated[Annotated[StrictStr, Field(min_length=1)],
                   explained("`image_url.url` must be a data URL string (data:image/png;base64,...).")] = Field(
        description="a base64 data URL (data:image/png;base64,...): this server never fetches a URL")


class ImageContent(Schema):
    type: Literal["image_url"]
    # {"url": ...} as OpenAI documents it, or the URL alone as some older clients send it
    image_url: Annotated[ImageUrl, BeforeValidator(lambda value: value if isinstance(value, dict) else {"url": value})]


def _part_type(part: Any) -> str | None:
    kind = part.get("type") if isinstance(part, dict) else None
    return {"text": TEXT, "image_url": IMAGE}.get(kind) if isinstance(kind, str) else None


def _known_part(part: Any) -> Any:
    if _part_type(part) is None:
        kind = part.get("type") if isinstance(part, dict) else None
        raise refusal(f"The content part type {kind!r} is not supported: use text or image_url.", field="type")
    return part


def _content_type(content: Any) -> str | None:
    return STRING if isinstance(content, str) else PARTS if isinstance(content, list) else None


ContentPart = Annotated[Union[Annotated[TextContent, Tag(TEXT)], Annotated[ImageContent, Tag(IMAGE)]],
                        Discriminator(_part_type), BeforeValidator(_known_part)]
Content = Annotated[
    Union[Annotated[Text, Tag(STRING)], Annotated[list[ContentPart], Tag(PARTS)]],
    Discriminator(_content_type, custom_error_type=REFUSED,
                  custom_error_message="`content` must be a string or a list of content parts."),
]


class Message(Schema):
    role: Annotated[Literal["system", "developer", "user", "assistant"],
                    explained("The role {value} is not supported: use system, user or assistant.")]
    content: Content | None = Field(None, description="a string, or text and image_url parts (images in user "
                                                      "messages only, as data URLs)")

    @model_validator(mode="before")
    @classmethod
    def _no_tool_calls(cls, message: Any) -> Any:
        if isinstance(message, dict) and (message.get("tool_calls") or message.get("function_call")):
            raise refusal("Tool and function calls are not supported by this server.", field="tool_calls",
                          code="unsupported_parameter")
        return message

    @model_validator(mode="after")
    def _has_content(self) -> "Message":
        if self.content is None and self.role != "assistant":
            raise refusal("`content` must be a string or a list of content parts.", field="content")
        return self


# The request ------------------------------------------------------------------------------
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {  # whether a field's value asks for what is not supported
    "tools": bool, "functions": bool, "function_call": lambda v: v not in ("none", "auto"),
    "tool_choice": lambda v: v not in ("none", "auto"), "stop": bool, "logit_bias": bool,
    "frequency_penalty": lambda v: v != 0, "presence_penalty": lambda v: v != 0, "audio": bool, "prediction": bool,
    "modalities": lambda v: v != ["text"],
    "response_format": lambda v: not (isinstance(v, dict) and v.get("type") == "text"),
}


class StreamOptions(Schema):
    include_usage: Annotated[bool, BeforeValidator(bool)] = False


class ChatCompletionRequest(Schema):
    model: Annotated[Annotated[StrictStr, Field(min_length=1)],
                     explained("`model` is required: use the id from GET /v1/models.")] = Field(
        description="The id from GET /v1/models.")
    n: integer(1, 1, "Only n=1 is supported: send one request per completion.") = 1
    messages: Annotated[
        Annotated[list[Annotated[Message, explained("Each message must be an object with `role` and `content`.")]],
                  Field(min_length=1, max_length=MAX_MESSAGES)],
        explained("`messages` must be a non-empty list.",
                  too_long=f"`messages` may hold at most {MAX_MESSAGES} messages."),
    ] = Field(description="system (or developer), user and assistant messages")
    max_completion_tokens: integer(1) | None = None
    max_tokens: integer(1) | None = None
    min_tokens: integer(0) = 0
    top_k: integer(-1, MAX_TOP_K) = Field(0, description="0 or -1: no top-k")
    temperature: number(0.0, 2.0) = Field(1.0, description="0 is greedy decoding")
    top_p: number(0.0, 1.0, above=True) = 1.0
    repetition_penalty: number(0.0, 2.0, above=True) = 1.0
    stream: Annotated[Flag, explained("`stream` must be true or false.")] = False
    stream_options: Annotated[StreamOptions, BeforeValidator(lambda value: value or {}),
                              explained("`stream_options` must be an object.")] = StreamOptions()
    logprobs: Annotated[Flag, explained("`logprobs` must be true or false.")] = False
    top_logprobs: integer(0, 20) = 0

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, body: Any) -> Any:
        for name, used in UNSUPPORTED.items():
            if isinstance(body, dict) and body.get(name) is not None and used(body[name]):
                raise refusal(f"`{name}` is not supported by this server.", field=name, code="unsupported_parameter")
        return body

    @field_validator("top_logprobs")
    @classmethod
    def _no_alternatives(cls, top_logprobs: int) -> int:
        if top_logprobs:
            raise refusal("`top_logprobs` is not supported: the engine reports only the chosen token's "
                          "log-probability (use top_logprobs 0).", code="unsupported_parameter")
        return top_logprobs


def openapi_schema() -> dict:
    """The request's JSON schema with its definitions written in place (an operation's schema
    cannot carry `$defs` of its own)."""
    schema = ChatCompletionRequest.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    return inline(schema)


def param_of(loc: tuple[int | str, ...], field: str | None = None) -> str:
    """`messages[0].content[1].text` for pydantic's ("messages", 0, "content", PARTS, 1, TEXT, "text")."""
    param = ""
    for step in (*loc, field) if field else loc:
        if isinstance(step, int):
            param += f"[{step}]"
        elif step not in UNION_TAGS:
            param += f".{step}" if param else step
    return param


def parse_request(body: dict) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise request_error(exc) from None


def request_error(exc: ValidationError) -> ApiError:
    """The first thing pydantic found wrong, as the 400 OpenAI's API would answer."""
    error = exc.errors(include_url=False)[0]
    context = error.get("ctx") or {}
    param = param_of(error["loc"], context.get("field")) or None
    if error["type"] == REFUSED:
        return invalid(error["msg"], param=param, code=context.get("code"))
    return invalid(f"`{param or 'body'}` is not valid: {error['msg']}.", param=param)


# After the model: the server's own limits -------------------------------------------------
@dataclass
class PendingImage:
    data: bytes
    param: str


@dataclass
class ChatBody:
    """A validated chat completion request, images not yet through intake."""

    messages: list[tuple[str, list[str | PendingImage]]]
    max_tokens: int
    min_tokens: int
    sampling: SamplingParams
    stream: bool
    include_usage: bool
    logprobs: bool


def encoded_limit(max_bytes: int) -> int:
    """Longest base64 text that can decode to at most `max_bytes` (plus line breaks)."""
    return 4 * math.ceil(max_bytes / 3) + 1024


def parse_data_url(url: str, param: str, limits: ImageLimits) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise invalid("Image URLs are not fetched by this server: send the image inline as a base64 data URL "
                      "(data:image/png;base64,...).", param=param, code="image_url_not_supported")
    if scheme != "data":
        raise invalid("`image_url.url` must be a base64 data URL (data:image/png;base64,...).", param=param,
                      code="image_url_not_supported")
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise invalid("The data URL has no data (expected data:image/png;base64,...).", param=param)
    fields = [f.strip().lower() for f in header.split(";")]
    if "base64" not in fields[1:]:
        raise invalid("The data URL must be base64-encoded (data:image/png;base64,...).", param=param)
    if fields[0] and not fields[0].startswith("image/"):
        raise invalid(f"The data URL's media type must be an image, not {fields[0]}.", param=param)
    if len(payload) > encoded_limit(limits.max_bytes):
        raise invalid(ImageRejected("too_large", limits).message("en"), param=param, code="too_large")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("The data URL's image is not valid base64.", param=param) from None


def chat_body(request: ChatCompletionRequest, max_new_tokens: int, limits: ImageLimits) -> ChatBody:
    """The request within this server's limits, its images decoded (400 otherwise)."""
    param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    max_tokens = request.max_completion_tokens or request.max_tokens or max_new_tokens
    if max_tokens > max_new_tokens:
        raise invalid(f"`{param}` is at most {max_new_tokens} on this server (SNAPDESK_MAX_NEW_TOKENS).",
                      param=param)
    if request.min_tokens > max_tokens:
        raise invalid(f"`min_tokens` must not be more than {param} ({max_tokens}).", param="min_tokens")
    sampling = SamplingParams(temperature=request.temperature, top_p=request.top_p, top_k=max(request.top_k, 0),
                              repetition_penalty=request.repetition_penalty)
    return ChatBody(_messages(request.messages, limits), max_tokens, request.min_tokens, sampling, request.stream,
                    request.stream_options.include_usage, request.logprobs)


def _messages(messages: list[Message], limits: ImageLimits) -> list[tuple[str, list[str | PendingImage]]]:
    decoded: list[tuple[str, list[str | PendingImage]]] = []
    images = 0
    for i, message in enumerate(messages):
        content = message.content
        parts: list[str | PendingImage] = []
        for j, part in enumerate([content] if isinstance(content, str) else content or []):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, TextContent):
                parts.append(part.text)
            else:
                param = f"messages[{i}].content[{j}]"
                if message.role != "user":
                    raise invalid("Images are accepted in user messages only.", param=param)
                images += 1
                if images > MAX_IMAGES:
                    raise invalid(f"A request may carry at most {MAX_IMAGES} images.", param=param)
                parts.append(PendingImage(parse_data_url(part.image_url.url, f"{param}.image_url.url", limits),
                                          param))
        decoded.append((ROLES[message.role], parts))
    return decoded
