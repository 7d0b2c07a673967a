"""sslnb: contrastive self-supervised learning, reproduced (see README.md and ARCHITECTURE.md).

Importing the package imports :mod:`sslnb.methods`, whose classes enter themselves in
``sslnb.config.METHODS``: so ``Config(method=...)`` knows every method however the library is entered.
"""

from . import methods  # noqa: F401  (registers every method)
