"""The LLM cost ledger: one row per billed call, written when the attempt ends."""

from __future__ import annotations

import json

from ..jsonvalue import dumps
from .base import LLMCall
from .sql import SQLDB


class SQLLedger(SQLDB):
    """The ``llm_calls`` table."""

    def record_llm_call(self, call: LLMCall) -> None:
        """One billed call, committed at once from the calling (worker) thread.

        Not fenced by the lease: money spent is counted even by a process that
        has lost its run. ``_tx`` serialises it with the coordinator's writes.
        """
        with self._tx() as c:
            c.execute(
                "INSERT INTO llm_calls (run_id, step, node, idx, attempt, provider, model,"
                " tokens_in, tokens_out, cached_tokens, cache_write_tokens, price, cost_usd, ts,"
                " cache_write_1h_tokens, served_model, estimate_usd, reasoning_tokens)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    call.run_id,
                    call.step,
                    call.node,
                    call.index,
                    call.attempt,
                    call.provider,
                    call.model,
                    call.tokens_in,
                    call.tokens_out,
                    call.cached_tokens,
                    call.cache_write_tokens,
                    None if call.price is None else dumps(call.price),
                    call.cost_usd,
                    call.ts,
                    call.cache_write_1h_tokens,
                    call.served_model,
                    call.estimate_usd,
                    call.reasoning_tokens,
                ),
            )

    def llm_calls(self, run_id: str) -> list[LLMCall]:
        with self._read() as c:
            rows = c.execute(
                "SELECT run_id, step, node, idx, attempt, provider, model, tokens_in, tokens_out,"
                " cached_tokens, cache_write_tokens, price, cost_usd, ts, cache_write_1h_tokens,"
                " served_model, estimate_usd, reasoning_tokens"
                " FROM llm_calls"
                " WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        return [
            LLMCall(
                run_id=r[0],
                step=r[1],
                node=r[2],
                index=r[3],
                attempt=r[4],
                provider=r[5],
                model=r[6],
                tokens_in=r[7],
                tokens_out=r[8],
                cached_tokens=r[9],
                cache_write_tokens=r[10],
                price=None if r[11] is None else json.loads(r[11]),
                cost_usd=r[12],
                ts=r[13],
                cache_write_1h_tokens=r[14],
                served_model=r[15],
                estimate_usd=r[16],
                reasoning_tokens=r[17],
            )
            for r in rows
        ]
