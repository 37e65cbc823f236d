"""Image encoders, clinical encoder and the fusion model, built from a ModelConfig."""
