"""Engines of live collections: one per retriever kind (encode, write, open, merge, search segments).

The registry :data:`ENGINES` maps retriever names to engine classes, imported lazily (as
:data:`lsr.retrievers.base.RETRIEVERS`), so that torch and faiss load only when used.
"""
from lsr.collection.engines.base import ENGINES, Engine, SegmentPart, engine_class

__all__ = ["ENGINES", "Engine", "SegmentPart", "engine_class"]
