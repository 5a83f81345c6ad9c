"""Files in and out: manifests and atomic directories, encoded shards, vector JSONL
interchange (Anserini JsonVectorCollection, Seismic), TREC runs, corpus/query/qrels readers.

Nothing here imports an encoder or an index: both of those layers build on it.
"""
