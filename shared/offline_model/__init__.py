"""A built-in offline "model": a deterministic keyword router exposed to LiteLLM as a provider.

    register_offline_model()
    await litellm.acompletion(model=OFFLINE_MODEL, messages=..., tools=..., num_retries=0)

It is not an LLM. For a user message it splits the text into clauses, picks for each clause the
tool whose name and description best match it (`routing`), and fills the arguments from the text,
guided only by the tool's JSON schema (`extraction`). After tool results it answers with a plain
rendering of them (`summary`). Everything it knows comes from the `tools` of the request and the
JSON of the results; it names no tool and no result field. Same input, same output: no randomness,
no clock. `provider` is the LiteLLM glue.
"""

from shared.offline_model.provider import (
    OFFLINE_PROVIDER,
    OfflineKeywordRouter,
    register_offline_model,
    respond,
)

__all__ = ["OFFLINE_PROVIDER", "OfflineKeywordRouter", "register_offline_model", "respond"]
