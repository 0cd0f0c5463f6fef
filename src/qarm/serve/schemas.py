"""Request and response bodies, with the limits of a ``ServeConfig`` baked into their validators.

Ids are strict JSON integers inside int64 (``"12"``, ``1.5`` or ``2**70`` are 422s, not lookups);
unknown fields are refused, so a misspelt ``descripton`` is an error rather than silently dropped.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from qarm.serve.config import ServeConfig

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ItemId = Annotated[int, Strict(), Field(ge=INT64_MIN, le=INT64_MAX)]


class ItemCodes(BaseModel):
    item_id: int | None
    vq: list[int]
    rq: list[int]


class ItemCodesBatch(BaseModel):
    items: list[ItemCodes]


class IngestedItem(BaseModel):
    item_id: int
    vq: list[int]
    rq: list[int]
    replaced: bool      # the id had an ingested entry before (now replaced)
    catalogue: bool     # the id is a catalogue item whose codes this entry overrides


class IngestResponse(BaseModel):
    version: str        # codebook version that coded the items
    items: list[IngestedItem]


class DeleteResponse(BaseModel):
    item_id: int
    deleted: bool
    catalogue: bool     # a catalogue item: its catalogue codes serve again


class CandidateScores(BaseModel):
    item_id: int
    scores: dict[str, float]


class RankResponse(BaseModel):
    variant: str
    tasks: list[str]
    items: list[CandidateScores]


def all_request_models(cfg: ServeConfig) -> tuple[type[BaseModel], ...]:
    """(NewItem, ItemsRequest, RankRequest, IngestRequest) with ``cfg``'s limits."""
    Text = Annotated[str, Field(max_length=cfg.max_text_chars)]
    # base64 is 4 chars per 3 bytes; the slack admits a data: URL prefix
    B64 = Annotated[str, Strict(), Field(min_length=1, max_length=(cfg.max_media_bytes + 2) // 3 * 4 + 256)]
    Path = Annotated[str, Strict(), Field(min_length=1, max_length=4096)]

    class NewItem(BaseModel):
        """One item in the items schema's terms: text fields, and at most one image and one audio."""

        model_config = ConfigDict(extra="forbid")
        item_id: ItemId | None = None
        title: Text = ""
        description: Text = ""
        tags: Text = ""
        category: Text = ""
        text: Text = ""  # the text tower's input; composed from the fields above when empty
        image_b64: B64 | None = None
        image_path: Path | None = None
        audio_b64: B64 | None = None
        audio_path: Path | None = None

        @model_validator(mode="after")
        def _one_source_per_modality(self) -> "NewItem":
            if self.image_b64 is not None and self.image_path is not None:
                raise ValueError("give image_b64 or image_path, not both")
            if self.audio_b64 is not None and self.audio_path is not None:
                raise ValueError("give audio_b64 or audio_path, not both")
            has_text = any(s.strip() for s in (self.title, self.description, self.tags, self.category, self.text))
            has_media = any(v is not None for v in (self.image_b64, self.image_path, self.audio_b64, self.audio_path))
            if not has_text and not has_media:
                raise ValueError("item has no content: give a text field (title, description, tags, category, "
                                 "text), an image or an audio clip")
            return self

    class ItemsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[NewItem] = Field(min_length=1, max_length=cfg.max_batch_items)

    class RankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: ItemId | None = None
        history: list[ItemId] = Field(default_factory=list, max_length=cfg.max_history)
        candidates: list[ItemId] = Field(min_length=1, max_length=cfg.max_candidates)
        variant: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    class IngestRequest(BaseModel):
        """POST /items: every item needs its ``item_id``; ``overwrite`` allows catalogue ids."""

        model_config = ConfigDict(extra="forbid")
        items: list[NewItem] = Field(min_length=1, max_length=cfg.max_batch_items)
        overwrite: Annotated[bool, Strict()] = False

        @model_validator(mode="after")
        def _ids_given_once(self) -> "IngestRequest":
            ids = [it.item_id for it in self.items]
            missing = [j for j, i in enumerate(ids) if i is None]
            if missing:
                raise ValueError(f"items[{missing[0]}] has no item_id: POST /items stores items by id "
                                 f"(POST /items/codes codes items without storing them)")
            seen: set[int] = set()
            for j, i in enumerate(ids):
                if i in seen:
                    raise ValueError(f"items[{j}]: item_id {i} appears more than once in the request")
                seen.add(i)
            return self

    return NewItem, ItemsRequest, RankRequest, IngestRequest
