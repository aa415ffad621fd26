"""The model's vocabulary in its own input embedding space: per-token tables, what a typed query becomes, exact
top-k search (FAISS on the CPU or GPU, a matmul for batches), and the views (neighbours, analogies, similarity, odd one
out, vectors, maps). May import core.errors and core.checks; no other part of core."""
