"""Fine-tune multimodal LLMs with Paddle from one JSON argument file."""
