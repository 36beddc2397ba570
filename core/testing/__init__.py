"""Test helpers for invertkit and for third-party plugin authors.

* :mod:`invertkit.core.testing.strategies` — hypothesis strategies (capability sets, probability matrices,
  image batches, tiny random :class:`~invertkit.core.interfaces.TorchTarget` s).
* :mod:`invertkit.core.testing.contracts` — contract test base classes (:class:`DefenseContract`,
  :class:`AttackContract`, :class:`TargetContract`): subclass one in a ``test_*.py`` module as
  ``class TestMyDefense(DefenseContract): defense_cls = MyDefense`` and pytest runs the whole contract.

Both need ``hypothesis`` and ``pytest`` (the ``dev`` extra); importing :mod:`invertkit` never imports them.
"""
