"""Resuming a durable run whose process died (`kill -9`, a crash, a lost machine) at its last checkpoint.

The loop checkpoints a run at every point it could be resumed from, and records where it stood
(`RunState.phase`). Resuming picks up from exactly there, with two rules: a tool call whose result was
checkpointed is never run again, and a call that was running when the process died is run again only
if its tool is `idempotent`; otherwise the model is told it was interrupted and may or may not have
taken effect (it can check, and decide).

- "ready": the next model call was due and nothing of it had been kept; it is made now.
- "generating": the model call was under way; its output was lost, so it is made again. Calls it had
  already closed keep their outcome: when the new call writes the same call at the same place (a
  deterministic backend does), the checkpointed result is used instead of running it again; a call that
  was still running is treated as interrupted. Any of those the new call does not write again are
  named to the model in a note, since their effects may remain.
- "streamed": the model's whole turn was kept; only the calls without a result are settled, then the
  step ends as it would have.
- "approving", "decided": the block is settled (approved calls that were running), then the loop goes on.
"""

from __future__ import annotations

from agentkit.backends.assembly import Turn
from agentkit.loop import Loop


async def recover(loop: Loop) -> None:
    """Continue `loop.state` (status "running", loaded from a store) from its last checkpoint."""
    st = loop.state
    phase = st.phase
    if phase == "ready":
        await loop.run(at_step=True)
    elif phase == "generating":
        runner = loop.tools
        for index, call in enumerate(st.block):
            key = f"{index}:{call.signature()}"
            done = st.block_results.get(index)
            if done is not None:
                if done.error_kind != "malformed":  # refused calls are refused again, never carried
                    runner.carried[key] = done
            elif index not in st.pending:
                runner.in_flight.add(key)
        st.block, st.block_results, st.pending = [], {}, []
        st.step -= 1
        if st.steps and st.steps[-1].step == st.step + 1:
            st.steps.pop()
        await loop.run(at_step=True)  # leftovers are named to the model by Loop.generate
    elif phase == "streamed" and st.partial is not None:
        turn = Turn.from_dict(st.partial)
        await loop.tools.settle()
        await loop.flush()
        msg = await loop.end_step(turn, 0.0)
        if await loop.decide(turn, msg):
            st.phase = "decided"
            loop.checkpoint(True)
            await loop.run()
    else:
        await loop.tools.settle()
        await loop.flush()
        await loop.run()
