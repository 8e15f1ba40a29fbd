"""What the gateway talks to: the orchestrator's namespace on Temporal, the conversation store,
and the live feeds that merge a conversation's turn events and token deltas."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio.client import Client

from orchestrator.client import ConversationClient
from orchestrator.config import OrchestratorSettings
from orchestrator.feed import ConversationFeeds
from orchestrator.store import ConversationStore, open_store
from shared.config import TemporalSettings
from shared.temporal import connect


@dataclass
class Services:
    client: Client
    conversations: ConversationClient
    task_queue: str
    store: ConversationStore
    feeds: ConversationFeeds

    @classmethod
    async def open(cls, temporal: TemporalSettings, orchestrator: OrchestratorSettings) -> Services:
        """Connect to Temporal and open the store. Raises RuntimeError when Temporal cannot be
        reached."""
        client = await connect(temporal)
        conversations = ConversationClient(client, temporal.task_queue)
        password = orchestrator.store_password
        store = open_store(
            orchestrator.store_url, password.get_secret_value() if password else None
        )
        feeds = ConversationFeeds(conversations, store)
        return cls(client, conversations, temporal.task_queue, store, feeds)

    async def close(self) -> None:
        await self.feeds.close()
        await self.store.close()
