"""stream-learner: online training of recommender models from a Kafka stream."""

__version__ = "0.1.0"
