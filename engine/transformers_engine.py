"""The in-process backend: Qwen3-VL through transformers, on one worker thread.

One `generate` call serves a whole batch (left-padded; Qwen3-VL's 3-D rope positions
follow the attention mask). Tokens are handed to each request's own stream as they are
produced, together with their log-probability under the raw model distribution, which
is what `confidence` is computed from.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

from .base import (
    generate_from_stream,
    EngineError,
    FinishReason,
    Generation,
    GenerationRequest,
    GenerationStream,
    ImagePart,
    Timings,
)
from .batching import BatchWorker, Job
from .control_tokens import neutralize, pattern_for, untrusted
from .detokenize import IncrementalDetokenizer
from .loading import LoadedModel, LoadOptions, load_model, visual_tokens

log = logging.getLogger(__name__)

# A batch running longer than this (times the request timeout, plus the grace) is stuck.
STALL_FACTOR = 1.5
STALL_GRACE_S = 1.0


def to_chat_template_messages(request: GenerationRequest, control: re.Pattern[str] | None = None) -> list[dict]:
    """The request's messages in the shape Qwen's chat template expects.

    `control` matches the tokenizer's control tokens, neutralized in every non-system text.
    """
    messages = []
    for message in request.messages:
        def text(value: str) -> str:
            return neutralize(value, control) if untrusted(message.role) else value

        if all(not isinstance(part, ImagePart) for part in message.parts):
            content: Any = text("".join(part.text for part in message.parts))  # type: ignore[union-attr]
        else:
            content = [
                {"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": text(part.text)}
                for part in message.parts
            ]
        messages.append({"role": message.role, "content": content})
    return messages


def batch_key(request: GenerationRequest) -> Hashable:
    """Requests with the same decoding settings can share one generate call."""
    return (request.sampling, request.min_new_tokens)


@dataclass(eq=False)
class _Row:
    """One request's place in a running batch."""

    job: Job
    detokenizer: IncrementalDetokenizer
    prompt_tokens: int
    image_tokens: int
    started: float
    logprobs: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    unsent: str = ""
    finish_reason: FinishReason | None = None

    @property
    def max_new_tokens(self) -> int:
        return self.job.request.max_new_tokens

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.job.cancelled


class _BatchStreamer:
    """Receives each step's tokens from `generate` and fans them out to the rows.

    Text is handed to the event loop at most every `interval` seconds (and at once for a
    request's first token): waking the loop on every token of every row would have the
    loop thread compete with this one for the GIL on every decoding step.
    """

    def __init__(self, rows: list[_Row], eos_ids: set[int], capture: "_LogitCapture", interval: float) -> None:
        self.rows = rows
        self.eos_ids = eos_ids
        self.capture = capture
        self.interval = interval
        self._seen_prompt = False
        self._last_flush = 0.0

    def put(self, value: Any) -> None:
        if not self._seen_prompt:  # the first call carries the prompt ids
            self._seen_prompt = True
            return
        tokens = value.tolist()
        logprobs = self.capture.logprobs_of(value)
        now = time.perf_counter()
        urgent = False
        for row, token, logprob in zip(self.rows, tokens, logprobs):
            if row.done:
                continue
            if row.first_token_at is None:
                row.first_token_at = now
                urgent = True
            row.logprobs.append(logprob)
            row.token_ids.append(token)
            if token in self.eos_ids:
                row.finish_reason = "stop"
                continue
            row.unsent += row.detokenizer.add(token)
            if len(row.logprobs) >= row.max_new_tokens:
                row.finish_reason = "length"
        if urgent or now - self._last_flush >= self.interval:
            self.flush(now)

    def flush(self, now: float) -> None:
        deltas = [(row.job.stream, row.unsent) for row in self.rows if row.unsent]
        for row in self.rows:
            row.unsent = ""
        if deltas:
            GenerationStream.push_deltas(deltas)
        self._last_flush = now

    def end(self) -> None:
        pass


class _LogitCapture:
    """Keeps the last forward pass's raw next-token logits (before any sampling change)."""

    def __init__(self) -> None:
        self._logits = None
        self._logsumexp = None

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        import torch

        logits = output.logits[:, -1, :].float()
        self._logits = logits
        self._logsumexp = torch.logsumexp(logits, dim=-1)

    def logprobs_of(self, tokens: Any) -> list[float]:
        index = tokens.to(self._logits.device).long().unsqueeze(1)
        chosen = self._logits.gather(1, index).squeeze(1) - self._logsumexp
        return chosen.cpu().tolist()


class _RowLimits:
    """Per-row stop: each request's own max_new_tokens, or its cancellation."""

    def __init__(self, rows: list[_Row], prompt_length: int, device: Any) -> None:
        import torch

        self.rows = rows
        self.prompt_length = prompt_length
        self.limits = torch.tensor([row.max_new_tokens for row in rows], device=device)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        stop = (input_ids.shape[1] - self.prompt_length) >= self.limits
        if any(row.job.cancelled for row in self.rows):
            cancelled = [row.job.cancelled for row in self.rows]
            stop = stop | torch.tensor(cancelled, dtype=torch.bool, device=stop.device)
        return stop


class TransformersEngine:
    """Qwen3-VL in this process. `start()` loads the model (blocking)."""

    def __init__(
        self,
        options: LoadOptions = LoadOptions(),
        *,
        max_queue: int = 64,
        max_batch_size: int = 8,
        batch_window_ms: float = 2.0,
        request_timeout_s: float | None = 120.0,
        stream_interval_ms: float = 20.0,
    ) -> None:
        self.options = options
        self.stream_interval = stream_interval_ms / 1000.0
        self.model_name = options.model
        self.request_timeout_s = request_timeout_s
        self.loaded: LoadedModel | None = None
        self._control: re.Pattern[str] | None = None
        self._worker = BatchWorker(
            self._run_batch,
            batch_key,
            max_queue=max_queue,
            max_batch_size=max_batch_size,
            batch_window_ms=batch_window_ms,
        )

    # Lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self.loaded is None:
            from tokenizers import Tokenizer

            self.loaded = load_model(self.options)
            # A private copy for counting tokens from other threads: the worker's tokenizer
            # changes its padding settings per batch, which must not race with a count.
            self._counting = Tokenizer.from_str(self.loaded.processor.tokenizer.backend_tokenizer.to_str())
            self._counting.no_padding()
            self._counting.no_truncation()
            self._control = pattern_for(self.loaded.processor.tokenizer.get_added_vocab())
            self._worker.start()

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    @property
    def queue_depth(self) -> int:
        return self._worker.depth

    @property
    def worker(self) -> BatchWorker:
        return self._worker

    def close(self) -> None:
        self._worker.close()

    @property
    def stalled(self) -> bool:
        """The model has been in one batch for longer than any request in it may take.

        Every request is cancelled at its timeout and a cancelled row stops at the next
        decoding step, so a batch running well past the timeout means the model itself is
        stuck (a hung kernel or driver); `/readyz` reports it so the process gets restarted.
        """
        if self.request_timeout_s is None:
            return False
        return self._worker.busy_for_s > STALL_FACTOR * self.request_timeout_s + STALL_GRACE_S

    # Token accounting (for fitting history into the context budget) ----------------
    def count_text_tokens(self, text: str) -> int:
        assert self.loaded is not None
        return len(self._counting.encode(text, add_special_tokens=False).ids)

    def count_image_tokens(self, width: int, height: int) -> int:
        return visual_tokens(width, height, self.options.min_image_tokens, self.options.max_image_tokens)

    # Requests --------------------------------------------------------------------
    def stream(self, request: GenerationRequest, timeout: float | None = None) -> GenerationStream:
        if self.loaded is None:
            raise EngineError("the model is not loaded yet")
        job_holder: list[Job] = []
        stream = GenerationStream(
            cancel=lambda: job_holder[0].cancel(),
            timeout=self.request_timeout_s if timeout is None else timeout,
        )
        job = Job(request=request, stream=stream)
        job_holder.append(job)
        self._worker.submit(job)
        return stream

    async def generate(self, request: GenerationRequest, timeout: float | None = None) -> Generation:
        return await generate_from_stream(self.stream(request, timeout))

    # Model side (worker thread only) -----------------------------------------------
    def build_inputs(self, requests: Sequence[GenerationRequest]) -> Any:
        """Tokenized, left-padded model inputs for a batch (every processor output)."""
        assert self.loaded is not None
        processor = self.loaded.processor
        texts = [
            processor.apply_chat_template(
                to_chat_template_messages(request, self._control), tokenize=False, add_generation_prompt=True
            )
            for request in requests
        ]
        images = [image for request in requests for image in request.images]
        inputs = processor(
            text=texts,
            images=images or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        return inputs.to(self.loaded.model.device)

    def generation_config(self, requests: Sequence[GenerationRequest]) -> Any:
        """The decoding settings for a batch of requests that share a batch key."""
        from transformers import GenerationConfig

        assert self.loaded is not None
        base = self.loaded.model.generation_config
        first = requests[0]
        sampling = first.sampling
        # Every field is set explicitly: unset ones would be filled from the checkpoint's
        # own generation_config (Qwen ships sampling defaults). For greedy decoding the
        # sampling fields are given their neutral values.
        greedy = sampling.greedy
        return GenerationConfig(
            max_new_tokens=max(r.max_new_tokens for r in requests),
            min_new_tokens=first.min_new_tokens or None,
            do_sample=not greedy,
            temperature=1.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=50 if greedy else sampling.top_k,
            repetition_penalty=sampling.repetition_penalty,
            eos_token_id=base.eos_token_id,
            pad_token_id=base.pad_token_id
            if base.pad_token_id is not None
            else self.loaded.processor.tokenizer.pad_token_id,
        )

    def eos_token_ids(self) -> set[int]:
        assert self.loaded is not None
        eos = self.loaded.model.generation_config.eos_token_id
        if eos is None:
            eos = self.loaded.processor.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos])

    def _run_batch(self, jobs: Sequence[Job]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        assert self.loaded is not None
        started = time.perf_counter()
        model = self.loaded.model
        rows: list[_Row] = []
        try:
            inputs = self.build_inputs([job.request for job in jobs])
            image_token_id = model.config.image_token_id
            for i, job in enumerate(jobs):
                rows.append(
                    _Row(
                        job=job,
                        detokenizer=IncrementalDetokenizer(self.loaded.processor.tokenizer),
                        prompt_tokens=int(inputs["attention_mask"][i].sum()),
                        image_tokens=int((inputs["input_ids"][i] == image_token_id).sum()),
                        started=started,
                    )
                )
            capture = _LogitCapture()
            streamer = _BatchStreamer(rows, self.eos_token_ids(), capture, self.stream_interval)
            limits = _RowLimits(rows, inputs["input_ids"].shape[1], inputs["input_ids"].device)
            hook = model.register_forward_hook(capture)
            try:
                with torch.inference_mode():
                    model.generate(
                        **inputs,
                        generation_config=self.generation_config([job.request for job in jobs]),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([limits]),
                    )
            finally:
                hook.remove()
        except Exception as exc:
            self._recover(jobs, rows, exc)
            return
        finished = time.perf_counter()
        for row in rows:
            self._finish(row, finished)

    def _recover(self, jobs: Sequence[Job], rows: list[_Row], exc: Exception) -> None:
        """A failed batch: retry alone each request that has streamed nothing yet.

        One request (a huge screenshot, a malformed input) can make a whole batch fail or
        run out of memory; retried one by one, only that request fails.
        """
        import torch

        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the retries the memory the failed batch held
        started_rows = {id(row.job) for row in rows if row.logprobs}
        if len(jobs) == 1:
            log.warning("generation failed: %s", type(exc).__name__)
            jobs[0].fail(EngineError(f"generation failed ({type(exc).__name__})"))
            return
        log.warning("batch of %d failed (%s); retrying its requests one by one", len(jobs), type(exc).__name__)
        for job in jobs:
            if id(job) in started_rows:
                job.fail(EngineError(f"generation failed ({type(exc).__name__})"))
            elif not job.cancelled:
                self._run_batch([job])

    @staticmethod
    def _finish(row: _Row, finished: float) -> None:
        tail = row.unsent + row.detokenizer.flush()
        row.unsent = ""
        if tail:
            row.job.stream.push_delta(tail)
        reason: FinishReason = row.finish_reason or ("cancelled" if row.job.cancelled else "length")
        submitted = row.job.submitted
        row.job.stream.push_result(
            Generation(
                text=row.detokenizer.text,
                finish_reason=reason,
                token_logprobs=tuple(row.logprobs),
                token_ids=tuple(row.token_ids),
                prompt_tokens=row.prompt_tokens,
                completion_tokens=len(row.logprobs),
                image_tokens=row.image_tokens,
                timings=Timings(
                    queued_ms=(row.started - submitted) * 1000.0,
                    first_token_ms=((row.first_token_at or finished) - submitted) * 1000.0,
                    total_ms=(finished - submitted) * 1000.0,
                ),
            )
        )
