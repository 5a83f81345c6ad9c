"""Retriever adapters for RAG frameworks (LangChain, LlamaIndex, Haystack) over a collection."""
