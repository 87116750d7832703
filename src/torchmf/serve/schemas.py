"""Request and response bodies (pydantic), built with the app's size limits.

Ids in JSON bodies may be strings or integers; strings are resolved like the
CLI resolves them (``"1"`` finds the int id 1, ``"007"`` never does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

__all__ = ["Limits", "build_schemas"]

Id = StrictStr | StrictInt
Value = Annotated[float, Field(allow_inf_nan=False)]


@dataclass(frozen=True)
class Limits:
    """Most a client may ask for in one request (larger requests get 422 or 413).

    Attributes
    ----------
    max_k : int
        Largest ``k``.
    max_users : int
        Users in one ``POST /v1/recommend``.
    max_pairs : int
        Pairs in one ``POST /v1/predict``.
    max_interactions : int
        Items in one session (``POST /v1/recommend/session``) and candidates
        (``item=``) in one ``GET /v1/recommend``.
    max_body_bytes : int
        Request body size.
    """

    max_k: int = 1000
    max_users: int = 1000
    max_pairs: int = 10_000
    max_interactions: int = 10_000
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_k", "max_users", "max_pairs", "max_interactions", "max_body_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")


class Error(BaseModel):
    """Every error response: one message naming the problem."""

    error: str
    detail: list[dict[str, Any]] | None = None


class ScoredItem(BaseModel):
    item: Id
    score: float
    title: str | None = Field(None, description="present when the service was started with --items")


class UserRecommendations(BaseModel):
    user: Id
    items: list[ScoredItem] = Field(description="best first")


class BatchRecommendations(BaseModel):
    results: list[UserRecommendations] = Field(description="one entry per requested user, in request order")


class SessionRecommendations(BaseModel):
    items: list[ScoredItem]


class Prediction(BaseModel):
    user: Id
    item: Id
    score: float


class Predictions(BaseModel):
    predictions: list[Prediction]


class SimilarItems(BaseModel):
    item: Id
    title: str | None = Field(None, description="present when the service was started with --items")
    items: list[ScoredItem]


class ItemHit(BaseModel):
    item: Id
    title: str | None = None


class ItemSearchResult(BaseModel):
    items: list[ItemHit]


class UserSearchResult(BaseModel):
    users: list[Id]


class Health(BaseModel):
    status: str
    model_dir: str | None = None
    version: str | None = None
    loaded_at: str | None = None
    reloading: bool | None = None
    reloads: int | None = None
    failed_reloads: int | None = None
    last_reload_error: str | None = None
    last_reload_error_at: str | None = None


class ReloadResult(BaseModel):
    status: str
    version: str
    previous: str | None


class ModelInfo(BaseModel):
    version: str
    checksum: str
    loaded_at: str
    model_dir: str
    users: int
    items: int
    training_interactions: int
    feedback: str
    ranking_scores: bool = Field(description="true when scores rank items rather than predict ratings")
    rating_range: list[float] | None
    hyperparameters: dict[str, Any]
    approximate_index: dict[str, Any] | None = Field(
        None, description="kind and build settings (with measured recall@10) of the saved approximate index"
    )
    training: dict[str, Any]


def build_schemas(limits: Limits) -> dict[str, type[BaseModel]]:
    """The request models, with ``limits`` in their JSON schema."""

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        users: list[Id] = Field(min_length=1, max_length=limits.max_users)
        k: int = Field(10, ge=1, le=limits.max_k)
        exclude_seen: bool = True
        approximate: bool = Field(False, description="use the model's approximate index when it has one")

    class SessionRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        interactions: dict[str, Value] | list[Id] = Field(
            description="{item: rating or strength}, or a list of items (implicit models: strength 1 each)",
            min_length=1,
            max_length=limits.max_interactions,
        )
        k: int = Field(10, ge=1, le=limits.max_k)

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        pairs: list[tuple[Id, Id]] = Field(min_length=1, max_length=limits.max_pairs)

    return {"RecommendRequest": RecommendRequest, "SessionRequest": SessionRequest, "PredictRequest": PredictRequest}
