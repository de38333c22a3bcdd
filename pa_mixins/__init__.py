"""pa_mixins: a PyTorch trainer assembled from small mixins, on Hugging Face Accelerate.

Importing the package has no side effect: it seeds nothing and configures no logging.
"""

from pa_mixins._version import __version__
from pa_mixins.mixins.accelerate import notebook_launcher
from pa_mixins.trainer import MinimalTrainer, Trainer, TrainerPlaceholderValues

__all__ = [
    "MinimalTrainer",
    "Trainer",
    "TrainerPlaceholderValues",
    "__version__",
    "notebook_launcher",
]
