"""Serving: `ModelSubscriber` follows a model's snapshot topic and scores with its newest version."""

from stream_learner.serving.subscriber import ModelSubscriber

__all__ = ["ModelSubscriber"]
