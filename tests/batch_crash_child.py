"""A service process that dies mid-batch: `python -m tests.batch_crash_child DB ANSWERS`.

Its worker (lease 1 s, 4 items a claim) answers the first ANSWERS generations, then
hangs in every later one while it keeps renewing its leases, until the test kills
it with SIGKILL. It prints `done ID` / `hang ID` for each document it was asked for.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Sequence

from extractor import GenerationRequest, GenerationResult, ScriptedEngine
from tests.service_support import answer, make_app

DOC_ID = re.compile(r"\[doc (\S+)\]")


class HangingEngine(ScriptedEngine):
    def __init__(self, answers: int) -> None:
        super().__init__(answer)
        self.answers = answers

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        found = DOC_ID.search(requests[0].messages[-1]["content"])
        ident = found.group(1) if found else "?"
        if self.answers <= 0:
            print("hang", ident, flush=True)
            await asyncio.Event().wait()
        self.answers -= 1
        results = await super().generate(requests)
        print("done", ident, flush=True)
        return results


async def main(db: str, answers: int) -> None:
    app = make_app(HangingEngine(answers), batch_db=db, batch_lease_s=1.0, batch_claim=4, batch_poll_s=0.02)
    async with app.router.lifespan_context(app):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
