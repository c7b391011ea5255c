"""sentiment-lora: fine-tune a decoder LLM with LoRA to classify text."""

from .config import Config, load_config
from .errors import UserError
from .predict import SentimentClassifier, load_model_with_lora, predict_sentiment

__version__ = "0.1.0"
__all__ = ["Config", "SentimentClassifier", "UserError", "load_config", "load_model_with_lora",
           "predict_sentiment", "__version__"]
