"""Fine-tuning: datasets, LoRA/QLoRA training jobs and the model versions they produce."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, Index, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot.db.base import Base, TimestampMixin
from bot.db.models._columns import Key, enum_column, foreign_key, primary_key
from bot.db.models.enums import TrainingMethod, TrainingStatus
from bot.db.models.storage import StoredObject


class Dataset(TimestampMixin, Base):
    """Training records in a file (`storage`), with their shape and the result of validation."""

    __tablename__ = "datasets"

    id: Mapped[int] = primary_key()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # chat (messages lists), instruction (instruction/input/output) or completion (prompt/completion).
    format: Mapped[str] = mapped_column(String(32))
    record_count: Mapped[int] = mapped_column(default=0, server_default="0")
    storage_id: Mapped[int | None] = foreign_key("storage.id", ondelete="SET NULL", nullable=True, index=True)
    # JSON Schema one record must satisfy.
    record_schema: Mapped[dict[str, Any]] = mapped_column(default=dict)
    validated_at: Mapped[datetime | None]
    validation_errors: Mapped[list[Any]] = mapped_column(default=list)
    owner_user_id: Mapped[int | None] = foreign_key("users.id", ondelete="SET NULL", nullable=True, index=True)

    stored_file: Mapped[StoredObject | None] = relationship(lazy="raise")


class TrainingJob(TimestampMixin, Base):
    """One fine-tuning run with its live progress; stoppable and resumable from its checkpoint."""

    __tablename__ = "training_jobs"
    __table_args__ = (Index(None, "status", "created_at"),)

    id: Mapped[int] = primary_key()
    dataset_id: Mapped[int | None] = foreign_key("datasets.id", ondelete="SET NULL", nullable=True, index=True)
    base_model: Mapped[str] = mapped_column(Key)
    method: Mapped[TrainingMethod] = enum_column(TrainingMethod, default=TrainingMethod.LORA)
    # Hyper-parameters: rank, alpha, dropout, target modules, learning rate, epochs, batch size…
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[TrainingStatus] = enum_column(TrainingStatus, default=TrainingStatus.QUEUED)
    step: Mapped[int] = mapped_column(default=0, server_default="0")
    total_steps: Mapped[int | None]
    loss: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[int | None]
    checkpoint_path: Mapped[str | None] = mapped_column(String(1000))
    output_path: Mapped[str | None] = mapped_column(String(1000))
    error: Mapped[str | None] = mapped_column(Text)
    requested_by_user_id: Mapped[int | None] = foreign_key("users.id", ondelete="SET NULL", nullable=True, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    dataset: Mapped[Dataset | None] = relationship(lazy="raise")


class ModelVersion(TimestampMixin, Base):
    """A trained adapter or merged model; deploy and roll back between versions of one name."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"), Index(None, "name", "is_deployed"))

    id: Mapped[int] = primary_key()
    training_job_id: Mapped[int | None] = foreign_key(
        "training_jobs.id", ondelete="SET NULL", nullable=True, index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int]
    base_model: Mapped[str | None] = mapped_column(Key)
    path: Mapped[str] = mapped_column(String(1000))
    # Evaluation results: loss, perplexity, A/B comparison scores.
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    is_deployed: Mapped[bool] = mapped_column(default=False, server_default=false())
    deployed_at: Mapped[datetime | None]
    # The model this version became when deployed to a provider.
    deployed_model_id: Mapped[int | None] = foreign_key("ai_models.id", ondelete="SET NULL", nullable=True, index=True)
    parent_version_id: Mapped[int | None] = foreign_key(
        "model_versions.id", ondelete="SET NULL", nullable=True, index=True
    )

    training_job: Mapped[TrainingJob | None] = relationship(lazy="raise")
    parent_version: Mapped[ModelVersion | None] = relationship(remote_side="ModelVersion.id", lazy="raise")
