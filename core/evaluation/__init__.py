"""The evaluation wing: what metrics are built from.

``features`` (preprocessing, the feature cache, pixel and torch-fidelity embeddings with
local weights), ``domain_embedding`` (the CNN trained on the training split),
``embeddings`` (choosing one by name, :class:`~raresynth.evaluation.embeddings.EmbeddingParams`),
``similarity`` (distances, SSIM, MS-SSIM) and ``imagesets`` (synthetic sets from a
generator, image folders). Metric plugins reach these through ``raresynth``'s public API.
"""
