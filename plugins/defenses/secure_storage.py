"""``secure-storage``: the stored templates never leak in the clear — Boddeti, "Secure Face Matching Using Fully
Homomorphic Encryption", IEEE BTAS 2018 (https://arxiv.org/abs/1805.00577).

The recognition system enrols each user's template encrypted under a fully homomorphic scheme and matches a
probe in the encrypted domain, releasing only the decision (or the score, decrypted by the key holder). A stolen
template database is ciphertext: a template-inversion attacker, whose threat model *is* the leaked template,
has nothing to invert. In the bench this is the one fact the defense changes: ``releases_templates = False``,
so every attack that needs leaked templates (``Attack.needs_templates``) is skipped by the plan with that reason
before anything runs, and the bench hands no ``templates`` to the attacks that do run (the ``random-prior``
baseline). The recognition model itself is untouched: its access level (white-box, embedding API with a budget)
is the target entry's, passed through unchanged.

Not modelled: the encryption's cost and any accuracy lost to encoding templates for encryption; matching here is
the clear-text system's.
"""

from __future__ import annotations

from typing import ClassVar

from invertkit.core.hookspecs import hookimpl
from invertkit.core.interfaces.config import ComponentConfig
from invertkit.plugins.defenses.none import NoDefense


class SecureStorage(NoDefense):
    """Templates are stored (and matched) encrypted: none leaks; the model's API is the entry's, unchanged (the
    target passes through as ``none`` passes it)."""

    class Config(ComponentConfig):
        """No options: the templates are encrypted or they are not."""

    name: ClassVar[str] = "secure-storage"
    threat_model: ClassVar[str] = "template protection"
    kind = "output"
    summary: ClassVar[str] = ("Secure template storage (homomorphic encryption): stored templates never leak, so "
                              "template-inversion attacks have nothing to invert; the model's API is unchanged.")
    paper: ClassVar[str] = "https://arxiv.org/abs/1805.00577"
    gradient: ClassVar[str] = "exact"
    releases_templates: ClassVar[bool] = False


@hookimpl
def invertkit_register_defenses(register) -> None:  # noqa: ANN001 - a Registrar
    register(SecureStorage)
