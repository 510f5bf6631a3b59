"""Long documents and many records: chunk (`split`, `budget`), extract each chunk with a derived
task (`tasks`), merge by source span (`merge`), check lists (`completeness`), run and stream
(`run`)."""

from extractor.longdoc.run import LongRun, extract_document, stream_document

__all__ = ["LongRun", "extract_document", "stream_document"]
