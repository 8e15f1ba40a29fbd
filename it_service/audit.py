"""Checks the chaos run asks this team for (named by `effect_audit` in team.toml)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.service import RPCError

from it_service.workflows import ITSessionWorkflow, session_workflow_id


async def duplicate_session_effects(client: Client, conversation_id: str) -> int:
    """How many tracked addresses in the conversation's session were recorded twice for the same
    call: each call id may add one entry, however often its activity ran."""
    handle = client.get_workflow_handle_for(
        ITSessionWorkflow.run, session_workflow_id(conversation_id)
    )
    try:
        state = await handle.query(ITSessionWorkflow.state)
    except RPCError:
        return 0  # no session: this conversation never used a session tool
    call_ids = [entry.call_id for entry in state.ip_history]
    return len(call_ids) - len(set(call_ids))
