"""`/v1/embeddings`: the inputs of requests that arrive together are embedded together.

One worker thread owns the encoder. It takes every request waiting (up to `max_batch` inputs
per forward pass, sorted by length inside `embed_ids`), embeds them, and hands each request its
own rows, so that concurrent requests share forward passes as chat requests share decode steps.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from chatsmith.inference.embeddings import embed_ids
from chatsmith.serving.scheduler import QueueFull


@dataclass(eq=False)
class _Request:
    seqs: list[list[int]]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class EmbeddingBatcher:
    def __init__(self, model: nn.Module, max_batch: int, max_queue: int):
        self.model, self.max_batch, self.capacity = model, max_batch, max_batch + max_queue
        self._cv = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._closing = False
        self.requests = self.inputs = self.passes = 0
        self._thread = threading.Thread(target=self._run, name="chatsmith-embed", daemon=True)
        self._thread.start()

    def submit(self, seqs: list[list[int]]) -> asyncio.Future:
        """A future for the (len(seqs), d) embeddings; QueueFull when too many are waiting."""
        loop = asyncio.get_running_loop()
        request = _Request(seqs, loop.create_future(), loop)
        with self._cv:
            if len(self._waiting) >= self.capacity:
                raise QueueFull(f"{len(self._waiting)} requests are waiting; try again shortly")
            self._waiting.append(request)
            self._cv.notify()
        return request.future

    def stats(self) -> dict:
        with self._cv:
            waiting = len(self._waiting)
        return {
            "waiting": waiting,
            "requests": self.requests,
            "inputs": self.inputs,
            "forward_passes": self.passes,
        }

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _take(self) -> list[_Request] | None:
        with self._cv:
            while not self._waiting and not self._closing:
                self._cv.wait()
            if self._closing:
                return None
            # everyone waiting joins this round; a round is several passes of max_batch inputs
            group = list(self._waiting)
            self._waiting.clear()
            return group

    def _run(self) -> None:
        while (group := self._take()) is not None:
            seqs = [s for r in group for s in r.seqs]
            try:
                vectors = embed_ids(self.model, seqs, self.max_batch)
            except Exception as e:  # answer every waiting request, keep the thread alive
                for r in group:
                    r.loop.call_soon_threadsafe(_fail, r.future, e)
                continue
            self.requests += len(group)
            self.inputs += len(seqs)
            self.passes += -(-len(seqs) // self.max_batch)
            start = 0
            for r in group:
                rows = vectors[start : start + len(r.seqs)]
                start += len(r.seqs)
                try:
                    r.loop.call_soon_threadsafe(_resolve, r.future, rows)
                except RuntimeError:  # the loop has closed: nobody is listening
                    pass


def _resolve(future: asyncio.Future, rows: torch.Tensor) -> None:
    if not future.done():  # the client may have gone
        future.set_result(rows)


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


def encode_vector(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    """OpenAI's encodings: a list of floats, or base64 of little-endian float32 bytes."""
    if encoding_format == "base64":
        data = vector.to(torch.float32).numpy().astype("<f4").tobytes()
        return base64.b64encode(data).decode("ascii")
    return vector.tolist()


def embedding_response(
    vectors: torch.Tensor, encoding_format: str, model_id: str, tokens: int
) -> dict:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
