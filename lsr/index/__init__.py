"""Indexes: vectors in, ranked positions out. The Numba inverted index (sparse), the FAISS dense
index (``dense``, the only module that imports faiss), MUVERA FDEs and exact MaxSim."""
