"""A scripted engine that `extract eval --engine answers` can build: it answers each document
from a JSON file `{document text: output}` (`--engine-option answers=FILE`).

An output that is a JSON object is sent as that JSON; a string is sent as is (so "not json"
fails validation on every attempt). A document the file does not name gets "{}".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from extractor import GenerationRequest, ScriptedEngine


class AnswerFileEngine(ScriptedEngine):
    name = "answers"

    def __init__(self, answers: str, model: str = "answer-file") -> None:
        self.answers: dict[str, Any] = json.loads(Path(answers).read_text(encoding="utf-8"))
        super().__init__(self._answer, model=model)

    def _answer(self, request: GenerationRequest) -> str:
        for message in reversed(request.messages):
            for text, output in self.answers.items():
                if message["role"] == "user" and text in message["content"]:
                    return output if isinstance(output, str) else json.dumps(output)
        return "{}"
